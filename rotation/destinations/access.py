"""What the caller hands the delivery layer: how to reach a destination, what to deliver, and
what a read-back saw. The layer never looks connections up itself (the rotation engine does, through
core's credential seam), so it stays testable and free of cycles."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import SecretStr

from core.azure_failure import AzureFailure
from core.errors import FieldError, Unprocessable

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential


@dataclass(frozen=True)
class AzureAccess:
    """A token credential for Key Vault / App Configuration: a connection's app, or the broker's
    own identity when the destination has no `connectionId`. `principal` names it in messages."""

    credential: AsyncTokenCredential
    principal: str = "the broker's identity"


@dataclass(frozen=True)
class DevOpsAccess:
    """An Azure DevOps connection's organization and a source of its Authorization header
    (`Basic ...` for a PAT, `Bearer ...` for an Entra token), refreshed by the caller as needed."""

    organization: str
    authorization: Callable[[], Awaitable[str]]


Access = AzureAccess | DevOpsAccess


@dataclass(frozen=True, repr=False)
class SecretToDeliver:
    """The rotated secret and what describes it (tags, expiry, variables)."""

    value: SecretStr
    key_id: str
    app_id: str
    expires_on: datetime

    def __repr__(self) -> str:
        return f"SecretToDeliver(key_id={self.key_id!r}, app_id={self.app_id!r}, value=**********)"

    def same_value(self, other: str | None) -> bool:
        """Constant-time comparison with what a destination holds (never logged)."""
        return other is not None and hmac.compare_digest(
            other.encode(), self.value.get_secret_value().encode()
        )


@dataclass(frozen=True)
class Held:
    """What a destination holds, as read back (never the value itself).

    `version`: Key Vault version, App Configuration etag, DevOps group `modifiedOn`.
    `matches`: the value (or reference) equals what we delivered; None when the service cannot say
    (DevOps never returns a secret's value). `key_id`: the key id the destination records, if any."""

    present: bool
    version: str | None = None
    key_id: str | None = None
    matches: bool | None = None


def needs_role(role: str, where: str, access: AzureAccess) -> str:
    return f"{access.principal} needs the '{role}' role on {where}; grant it and try again"


def role_refusal(failure: AzureFailure, field: str, fix: str, service: str) -> Unprocessable:
    """A refusal met while validating (401/403: the role to grant), as a 422 on the URL field."""
    return Unprocessable(
        f"{service} refused the request ({failure.code}).",
        [FieldError(field, fix)],
        extra={"step": failure.step, "azureCode": failure.code},
        code="azure-refused",
    )


def with_role(failure: AzureFailure, fix: str) -> AzureFailure:
    """A 401/403 met while delivering keeps its step and code, with the fix as its message (for
    `lastError`); any other failure is returned unchanged."""
    if failure.status not in (401, 403):
        return failure
    return AzureFailure(failure.step, failure.status, failure.code, fix)
