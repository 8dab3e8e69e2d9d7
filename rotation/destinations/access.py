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
from core.errors import FieldError, Problem, Unprocessable

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


@dataclass(frozen=True)
class AzureRole:
    """The data-plane role a destination's writer needs on the resource, and how a refusal names it.

    Neither Key Vault nor App Configuration has a "may I write" call: validation reads, so a
    read-only role passes it and fails the first delivery, with the same fix in `lastError`."""

    name: str  # "Key Vault Secrets Officer"
    service: str  # the service as a message names it: "Key Vault"

    def fix(self, where: str, access: AzureAccess) -> str:
        return f"{access.principal} needs the '{self.name}' role on {where}; grant it and try again"

    def refusal(self, failure: AzureFailure, field: str, fix: str) -> Unprocessable:
        """A refusal met while validating, as a 422 on the URL field saying what to do."""
        return Unprocessable(
            f"{self.service} refused the request ({failure.code}).",
            [FieldError(field, fix)],
            extra={"step": failure.step, "azureCode": failure.code},
            code="azure-refused",
        )

    def validating(self, failure: AzureFailure, field: str, fix: str) -> Problem:
        """Any failure met while validating: a 401/403 is the role to grant; others as the gateway says."""
        if failure.status in (401, 403):
            return self.refusal(failure, field, fix)
        return failure.problem(validating=True, fields={"clientId": field})

    def delivering(self, failure: AzureFailure, fix: str) -> AzureFailure:
        """A 401/403 met while delivering keeps its step and code, with the fix as its message (for
        `lastError`); any other failure is returned unchanged."""
        if failure.status not in (401, 403):
            return failure
        return AzureFailure(failure.step, failure.status, failure.code, fix)
