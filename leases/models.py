"""Request and response bodies of the dynamic secret and lease API, and the lease states.

States of a lease (`status`):
- `pending`: intent recorded, the password is being set (never visible for long; the
  reconciler resolves one left behind by a crash);
- `active`: the password works until `expiresAt`;
- `revoking`: a sweeper or a caller holds a claim (until `claimUntil`) and is resetting it;
- `revoked`: an unknown random password was set; kept for audit, purged after retention;
- `revoke_failed`: Azure refused; retried with backoff from `nextAttemptAt`;
- `forgotten`: an Admin gave up on a lease Azure cannot revoke (`?force=true`); audited.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, SecretStr, WithJsonSchema

from core import clock
from core.durations import format_duration, parse_duration
from core.models import ApiModel, RequestModel

if TYPE_CHECKING:
    from leases.records import DynamicSecret, Lease

MAX_USERS_PER_REQUEST = 100
PREFIX_PATTERN = r"^[A-Za-z][A-Za-z0-9-]{0,29}$"
GUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# A tenant is named by its GUID or one of its verified domains (Entra accepts both; a GUID fits).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}[A-Za-z0-9]$"


class LeaseStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKED = "revoked"
    REVOKE_FAILED = "revoke_failed"
    FORGOTTEN = "forgotten"


TERMINAL = {LeaseStatus.REVOKED, LeaseStatus.FORGOTTEN}


def _duration(value: object) -> timedelta:
    """The one place a TTL's text is parsed: a ValueError is a 422 naming the field and the form."""
    if isinstance(value, str) and not 2 <= len(value) <= 32:  # the wording of pydantic's own checks
        raise ValueError(f"String should have at {'least 2' if len(value) < 2 else 'most 32'} characters")
    return parse_duration(value)  # type: ignore[arg-type]  # not a string: the accepted form


# A TTL as the API writes it (`1h30m`), a `timedelta` from the request model on.
Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "minLength": 2, "maxLength": 32, "examples": ["1h", "15m", "1h30m", "7d"]}
    ),
]


def _time(at: datetime | None) -> str | None:
    return None if at is None else clock.isoformat(at)


class DynamicSecretCreate(RequestModel):
    """One dynamic secret is created per user, all with the same app and TTLs."""

    prefix: Annotated[str, Field(pattern=PREFIX_PATTERN, examples=["ops"])]
    default_ttl: Duration
    max_ttl: Duration
    tenant_id: Annotated[str, Field(pattern=TENANT_PATTERN)]
    application_id: Annotated[str, Field(pattern=GUID_PATTERN)]
    client_secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)]
    users: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(
            min_length=1, max_length=MAX_USERS_PER_REQUEST, description="object ids or user principal names"
        ),
    ]


class DynamicSecretUpdate(RequestModel):
    """Change the TTLs or the app's client secret (re-validated against Entra ID)."""

    default_ttl: Duration | None = None
    max_ttl: Duration | None = None
    client_secret: Annotated[SecretStr | None, Field(min_length=1, max_length=1024)] = None


class ServedUser(BaseModel):
    """The app and the user a dynamic secret serves: stored on it and on each of its leases, and shown."""

    tenant_id: str
    application_id: str
    user_id: str
    user_principal_name: str


class DynamicSecretOut(ApiModel, ServedUser):
    name: str
    id: str
    prefix: str
    default_ttl: str
    max_ttl: str
    created_at: str
    updated_at: str

    @classmethod
    def from_record(cls, ds: DynamicSecret) -> Self:
        return cls(
            **ds.model_dump(
                include=set(cls.model_fields) - {"default_ttl", "max_ttl", "created_at", "updated_at"}
            ),
            default_ttl=format_duration(ds.default_ttl),
            max_ttl=format_duration(ds.max_ttl),
            created_at=clock.isoformat(ds.created_at),
            updated_at=clock.isoformat(ds.updated_at),
        )


class DynamicSecretList(ApiModel):
    items: list[DynamicSecretOut]


class DynamicSecretsCreated(ApiModel):
    items: list[DynamicSecretOut]
    warnings: list[str] = Field(default_factory=list)


class LeaseCreate(RequestModel):
    ttl: Duration | None = None


class LeaseRenew(RequestModel):
    ttl: Duration | None = Field(default=None, description="default: the dynamic secret's defaultTtl")


class LeaseOut(ApiModel):
    id: str
    dynamic_secret_name: str
    user_id: str
    user_principal_name: str
    status: LeaseStatus
    created_at: str
    expires_at: str
    max_expires_at: str
    renewed_at: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: str | None = None

    @classmethod
    def from_record(cls, lease: Lease) -> Self:
        times = {name: _time(getattr(lease, name)) for name in cls.model_fields if name.endswith("_at")}
        return cls(**lease.model_dump(include=set(cls.model_fields) - set(times)), **times)


class Credentials(ApiModel):
    user_principal_name: str
    password: str


class LeaseCreated(ApiModel):
    lease: LeaseOut
    credentials: Credentials


class LeaseRenewed(ApiModel):
    lease: LeaseOut
    capped: bool
    requested_expires_at: str
    max_expires_at: str


class LeaseList(ApiModel):
    items: list[LeaseOut]
