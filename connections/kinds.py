"""What describes a connection kind to the generic service: its `KindSpec`, and the checks of a
PATCH that depend only on it (If-Match, credentials merged over the current ones).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr, ValidationError

from connections.store import ConnectionRecord
from core import azure_credentials
from core.azure_credentials import AppAccess
from core.errors import FieldError, PreconditionFailed, Problem, Unprocessable

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

# (secret values to store, row metadata, values to redact from Azure's messages)
Material = tuple[dict[str, str], dict[str, str], list[str]]
# What keys a connection's cached token credential (its secret, bundle or refresh token name), and
# how to build that credential.
CacheKey = tuple[str, Callable[[], "AsyncTokenCredential"]]


def secret_material(method: str, credentials: BaseModel) -> Material:
    """The usual material: each secret field (SecretStr) stored under its camelCase name, and redacted."""
    secrets = {
        name: value.get_secret_value()
        for name, value in credentials.model_dump(by_alias=True).items()
        if isinstance(value, SecretStr)
    }
    return secrets, {}, list(secrets.values())


@dataclass(frozen=True)
class KindSpec:
    """What differs between connection kinds."""

    kind: str
    credential_models: Mapping[str, type[BaseModel]]  # method -> credentials model (methods set by PATCH)
    # (record, secret values, redact) -> what the check read, for a hook's check_app (None: nothing);
    # raises the problem naming the field
    validate: Callable[[ConnectionRecord, dict[str, str], list[str]], Awaitable[Any]]
    current_credentials: Callable[[ConnectionRecord], Awaitable[dict[str, Any]]]  # for PATCH merges
    # the cache key of a record's token credential; None for a method without one (a DevOps PAT)
    cache_key: Callable[[ConnectionRecord], Awaitable[CacheKey | None]]
    material: Callable[[str, Any], Material] = secret_material  # (method, credentials) -> material
    paired_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # method -> change together

    @property
    def resource(self) -> str:
        """The audit entries' resource type."""
        return f"{self.kind}-connection"

    @property
    def prefix(self) -> str:
        """Where the kind's routes live."""
        return f"/api/v1/app-connections/{self.kind}"

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods a create body can name (OAuth connections are created by signing in)."""
        return tuple(self.credential_models)

    def method_of(self, credentials: BaseModel) -> str:
        """The method whose credentials these are."""
        return next(m for m, model in self.credential_models.items() if isinstance(credentials, model))


async def cached_access(spec: KindSpec, record: ConnectionRecord) -> AppAccess:
    """The connection's credential (and Graph client) from the gateway's one credential cache."""
    key = await spec.cache_key(record)
    if key is None:
        raise TypeError(f"{record.method} connections have no token credential")
    material, build = key
    return await azure_credentials.for_credential(
        record.tenant_id or "", record.client_id or "", material, build
    )


async def invalidate(spec: KindSpec, record: ConnectionRecord) -> None:
    """Close the cached access of this record's credential (it is being replaced or removed)."""
    try:
        key = await spec.cache_key(record)
    except Problem:
        return  # its secret is gone already: nothing cached can be reached by it any more
    if key is not None:
        await azure_credentials.drop(record.tenant_id or "", record.client_id or "", key[0])


class ConnectionChanges(BaseModel):
    """A PATCH, shape-checked by the route: only what is set changes."""

    name: str | None = None
    description: str | None = None
    description_set: bool = False
    credentials: dict[str, Any] | None = None


def field_errors(error: ValidationError, prefix: str) -> Unprocessable:
    """A pydantic error of a nested body part as a 422 with camelCase field paths."""
    errors = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item.get("loc", ()))
        kind = item.get("type")
        if kind == "missing":
            message = "is required"
        elif kind == "extra_forbidden":
            message = "is not a known field for this method; remove it"
        else:
            message = str(item.get("msg", "is invalid")).removeprefix("Value error, ")
        errors.append(FieldError(f"{prefix}{loc}".rstrip("."), message))
    return Unprocessable("The request has invalid fields; see errors.", errors)


def check_etag(record: ConnectionRecord, if_match: str | None) -> None:
    if if_match is not None and if_match.strip() not in {record.etag, "*"}:
        raise PreconditionFailed(
            "the connection changed since you read it (If-Match does not match its ETag); GET it and retry",
            code="etag-mismatch",
        )


async def merged_credentials(spec: KindSpec, record: ConnectionRecord, given: dict[str, Any]) -> Any:
    """PATCH credentials over the current ones: send only what changes (secrets are kept if absent)."""
    model = spec.credential_models.get(record.method)
    if model is None:
        raise Unprocessable(
            f"{record.method} connections cannot take new credentials by PATCH: sign in again with "
            f"POST {spec.prefix}/oauth/authorize (a new connection)",
            [FieldError("credentials", f"cannot be changed for method {record.method}")],
        )
    pair = spec.paired_fields.get(record.method, ())
    present = [name for name in pair if name in given]
    if present and len(present) != len(pair):
        missing = next(name for name in pair if name not in given)
        raise Unprocessable(
            f"{' and '.join(pair)} change together",
            [FieldError(f"credentials.{missing}", "is required when the other half changes")],
        )
    merged = {**await spec.current_credentials(record), **given}
    try:
        return model.model_validate(merged)
    except ValidationError as error:
        raise field_errors(error, "credentials.") from None
