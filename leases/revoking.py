"""Revoking leases: the claim, the password reset under the claim's deadline, and the outcome.

A revoke claims the lease (`-> revoking`, ETag, `claimUntil` = now + CLAIM_FOR), then sets an
unknown random password inside `azure_gateway.deadline(claimUntil)`: no call, retry or
Retry-After wait outlives the claim. A claim is taken over only at
`azure_gateway.takeover_at(claimUntil)` (the claim plus the longest single call), so a late
answer to the first holder's last request has landed before anyone else starts. The API, the
sweeper and the reconciler all revoke through `revoke_claimed`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from core import audit, azure_gateway, clock, events
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.errors import Conflict
from core.tables import ConcurrencyConflict, Row
from leases import provider, store
from leases.models import TERMINAL, LeaseOut, LeaseStatus
from leases.service import (
    CLAIM_FOR,
    azure_problem,
    backoff,
    credential_ref,
    iso,
    lease_out,
    lease_row,
    parse_time,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- revoking


def due_time(row: Row) -> datetime:
    """When the sweeper should act on a lease in its current state."""
    d = row.data
    status = d["status"]
    if status == LeaseStatus.REVOKE_FAILED.value:
        return parse_time(d.get("nextAttemptAt") or d["expiresAt"])
    if status == LeaseStatus.REVOKING.value:
        return azure_gateway.takeover_at(parse_time(d.get("claimUntil") or d["expiresAt"]))
    return parse_time(d["expiresAt"])


async def claim_for_revoke(row: Row, holder: str) -> Row:
    """`-> revoking` with a claim until now + CLAIM_FOR (ETag: two claimants, one wins)."""
    data = {
        **row.data,
        "status": LeaseStatus.REVOKING.value,
        "claimUntil": iso(clock.now() + CLAIM_FOR),
        "claimedBy": holder,
    }
    return await store.replace_lease(row, data)


def claim_until(row: Row) -> datetime:
    return parse_time(row.data["claimUntil"])


async def reset_password(claimed: Row, *, until: datetime | None = None) -> None:
    """Set an unknown random password (the leased one stops working), within the claim.

    `until` may end the work earlier than the claim (a sweep's own budget), never later.
    """
    d = claimed.data
    end = claim_until(claimed) if until is None else min(until, claim_until(claimed))

    async def call(access: provider.AppAccess) -> None:
        await provider.set_password(access, d["userId"], provider.generate_password())

    async with azure_gateway.deadline(end):
        ref = await credential_ref(claimed)
        await provider.with_stored_access(d["tenantId"], d["applicationId"], ref, call)


async def complete_revoke(row: Row, revoked_by: str, caller: Caller, *, detail: str = "") -> Row:
    now = clock.now()
    data = {
        **row.data,
        "status": LeaseStatus.REVOKED.value,
        "revokedAt": iso(now),
        "revokedBy": revoked_by,
        "claimUntil": None,
        "claimedBy": None,
        "nextAttemptAt": None,
    }
    row = await store.finish_lease(row, data)
    late = max(0, int((now - parse_time(data["expiresAt"])).total_seconds()))
    events.emit(
        "lease.revoked",
        leaseId=row.rk,
        dynamicSecretName=data["dynamicSecretName"],
        revokedBy=revoked_by,
        lateSeconds=late,
    )
    await audit.record(caller, "lease.revoke", "lease", row.rk, detail=detail or f"revoked by {revoked_by}")
    return row


async def record_failure(row: Row, failure: AzureFailure, caller: Caller) -> Row:
    """`revoke_failed`: keep the record, note the error, and move the due entry to the retry time."""
    now = clock.now()
    attempts = int(row.data.get("attempts") or 0) + 1
    delay = max(backoff(attempts), timedelta(seconds=failure.retry_after or 0))
    next_at = iso(now + delay)
    due_key = store.index_key("due", next_at, row.rk)
    data = {
        **row.data,
        "status": LeaseStatus.REVOKE_FAILED.value,
        "attempts": attempts,
        "lastError": failure.describe(),
        "nextAttemptAt": next_at,
        "dueKey": due_key,
        "claimUntil": None,
        "claimedBy": None,
    }
    new_row = await store.replace_lease(row, data)
    await store.move_due(row.rk, str(row.data["dueKey"]), due_key, str(data["createdAt"]))
    events.emit(
        "lease.revoke_failed",
        level=logging.WARNING,
        leaseId=row.rk,
        dynamicSecretName=data["dynamicSecretName"],
        error=data["lastError"],
        attempts=attempts,
        nextAttemptAt=next_at,
    )
    await audit.record(caller, "lease.revoke", "lease", row.rk, "failure", data["lastError"])
    return new_row


async def forget_lease(row: Row, failure: AzureFailure, caller: Caller) -> Row:
    """`forgotten`: an Admin gives up on a lease Azure refuses to revoke (audited; the password
    may still work in Azure, which the audit entry says)."""
    data = {
        **row.data,
        "status": LeaseStatus.FORGOTTEN.value,
        "revokedAt": iso(clock.now()),
        "revokedBy": caller.id,
        "lastError": failure.describe(),
        "claimUntil": None,
        "claimedBy": None,
        "nextAttemptAt": None,
    }
    row = await store.finish_lease(row, data)
    await audit.record(
        caller,
        "lease.force_forget",
        "lease",
        row.rk,
        detail="forgotten without revocation; the password may still work: " + failure.describe(),
    )
    events.emit(
        "lease.revoke_failed", level=logging.WARNING, leaseId=row.rk, error="forgotten: " + failure.describe()
    )
    return row


async def revoke_lease(lease_id: str, caller: Caller, *, force: bool, reason: str = "") -> LeaseOut:
    """Revoke now. With `force`, a lease Azure refuses to revoke is forgotten instead of kept."""
    row = await lease_row(lease_id)
    status = row.data["status"]
    if status in TERMINAL:
        return lease_out(row)
    if status == LeaseStatus.PENDING.value:
        raise Conflict("the lease is still being created; try again in a few seconds")
    if status == LeaseStatus.REVOKING.value and due_time(row) > clock.now():
        raise Conflict(f"the lease is being revoked by {row.data.get('claimedBy')}; read it again shortly")
    try:
        claimed = await claim_for_revoke(row, f"api:{caller.id}")
    except ConcurrencyConflict:
        raise Conflict("the lease changed meanwhile (another revoke?); read it again") from None
    try:
        await reset_password(claimed)
    except AzureFailure as failure:
        if force:
            return lease_out(await forget_lease(claimed, failure, caller))
        failed = await record_failure(claimed, failure, caller)
        raise azure_problem(
            failure,
            leaseId=lease_id,
            leaseStatus=failed.data["status"],
            nextAttemptAt=failed.data["nextAttemptAt"],
        ) from None
    detail = f"revoked by {caller.name}" + (f" ({reason})" if reason else "")
    return lease_out(await complete_revoke(claimed, caller.id, caller, detail=detail))
