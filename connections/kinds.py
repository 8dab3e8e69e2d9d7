"""What describes a connection kind to the generic service: its `KindSpec`, and the checks of a
PATCH that depend only on it (If-Match, credentials merged over the current ones).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from connections.store import ConnectionRecord
from core.errors import FieldError, PreconditionFailed, Unprocessable

# (secret values to store, row metadata, values to redact from Azure's messages)
Material = tuple[dict[str, str], dict[str, str], list[str]]


@dataclass(frozen=True)
class KindSpec:
    """What differs between connection kinds."""

    kind: str
    resource: str  # audit resource type
    credential_models: Mapping[str, type[BaseModel]]  # method -> credentials model (methods set by PATCH)
    material: Callable[[str, Any], Material]  # (method, credentials) -> material
    # (record, secret values, redact, require_key_id=...) -> None; raises the problem naming the field
    validate: Callable[..., Awaitable[None]]
    current_credentials: Callable[[ConnectionRecord], Awaitable[dict[str, Any]]]  # for PATCH merges
    invalidate: Callable[[ConnectionRecord], Awaitable[None]]  # close what is cached for its credential
    reauthorize_hint: str  # how an OAuth connection gets new credentials
    paired_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # method -> change together


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
            f"{record.method} connections cannot take new credentials by PATCH: {spec.reauthorize_hint}",
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
