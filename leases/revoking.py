"""Revoking leases: the claim, the password reset under the claim's deadline, and the outcome.

A revoke claims the lease (`-> revoking`, ETag, `claimUntil` = now + CLAIM_FOR), then sets an
unknown random password inside `azure_gateway.deadline(claimUntil)`: no call, retry or
Retry-After wait outlives the claim. A claim is taken over only at
`azure_gateway.takeover_at(claimUntil)` (the claim plus the longest single call), so a late
answer to the first holder's last request has landed before anyone else starts. The API, the
sweeper and the reconciler all revoke through `claim` / `reset_password` / `complete_revoke`;
the timers call only the functions at the end of this module (`due_entries`, `lease_to_sweep`,
`revoke`, `stale_intents`, `resolve_intent`, `purge_entries`, `purge`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from core import audit, azure_gateway, clock, events, records
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.errors import Conflict
from core.tables import ConcurrencyConflict
from leases import provider
from leases import records as lease_rows
from leases.models import TERMINAL, LeaseOut, LeaseStatus
from leases.records import IndexEntry, Lease, index_key
from leases.service import CLAIM_FOR, RECONCILE_AFTER, azure_problem, backoff, credential_ref, lease_record

log = logging.getLogger(__name__)

RECONCILER = "reconciler"  # the holder name of the reconciler's claims


# ---------------------------------------------------------------------------- revoking


def due_time(lease: Lease) -> datetime:
    """When the sweeper should act on a lease in its current state."""
    if lease.status == LeaseStatus.REVOKE_FAILED:
        return lease.next_attempt_at or lease.expires_at
    if lease.status == LeaseStatus.REVOKING:
        return azure_gateway.takeover_at(lease.claim_until or lease.expires_at)
    return lease.expires_at


async def claim(lease: Lease, holder: str) -> Lease:
    """`-> revoking` with a claim until now + CLAIM_FOR (ETag: two claimants, one wins)."""
    update = {"status": LeaseStatus.REVOKING, "claim_until": clock.now() + CLAIM_FOR, "claimed_by": holder}
    return await records.replace(lease.model_copy(update=update))


async def reset_password(claimed: Lease, *, until: datetime | None = None) -> None:
    """Set an unknown random password (the leased one stops working), within the claim.

    `until` may end the work earlier than the claim (a sweep's own budget), never later.
    """
    assert claimed.claim_until is not None
    end = claimed.claim_until if until is None else min(until, claimed.claim_until)

    async def call(access: provider.AppAccess) -> None:
        await provider.set_password(access, claimed.user_id, provider.generate_password())

    async with azure_gateway.deadline(end):
        ref = await credential_ref(claimed)
        await provider.with_stored_access(claimed.tenant_id, claimed.application_id, ref, call)


_UNCLAIMED = {"claim_until": None, "claimed_by": None, "next_attempt_at": None}


async def complete_revoke(claimed: Lease, revoked_by: str, caller: Caller, *, detail: str = "") -> Lease:
    now = clock.now()
    update = {"status": LeaseStatus.REVOKED, "revoked_at": now, "revoked_by": revoked_by, **_UNCLAIMED}
    lease = await lease_rows.finish_lease(claimed, claimed.model_copy(update=update))
    events.emit(
        "lease.revoked",
        level=logging.INFO,
        **lease.event_ids(),
        revokedBy=revoked_by,
        lateSeconds=max(0, int((now - lease.expires_at).total_seconds())),
    )
    await audit.record(caller, "lease.revoke", "lease", lease.id, detail=detail or f"revoked by {revoked_by}")
    return lease


async def record_failure(claimed: Lease, failure: AzureFailure, caller: Caller) -> Lease:
    """`revoke_failed`: keep the record, note the error, and move the due entry to the retry time."""
    attempts = claimed.attempts + 1
    next_at = clock.now() + max(backoff(attempts), timedelta(seconds=failure.retry_after or 0))
    update = {
        **_UNCLAIMED,
        "status": LeaseStatus.REVOKE_FAILED,
        "attempts": attempts,
        "last_error": failure.describe(),
        "next_attempt_at": next_at,
        "due_key": index_key("due", next_at, claimed.id),
    }
    failed = await records.replace(claimed.model_copy(update=update))
    await lease_rows.move_due(claimed, failed)
    events.emit(
        "lease.revoke_failed",
        level=logging.WARNING,
        **failed.event_ids(),
        error=failed.last_error,
        attempts=attempts,
        nextAttemptAt=clock.isoformat(next_at),
    )
    await audit.record(caller, "lease.revoke", "lease", failed.id, "failure", failure.describe())
    return failed


async def forget_lease(claimed: Lease, failure: AzureFailure, caller: Caller) -> Lease:
    """`forgotten`: an Admin gives up on a lease Azure refuses to revoke (audited; the password
    may still work in Azure, which the audit entry says)."""
    update = {
        **_UNCLAIMED,
        "status": LeaseStatus.FORGOTTEN,
        "revoked_at": clock.now(),
        "revoked_by": caller.id,
        "last_error": failure.describe(),
    }
    lease = await lease_rows.finish_lease(claimed, claimed.model_copy(update=update))
    await audit.record(
        caller,
        "lease.force_forget",
        "lease",
        lease.id,
        detail="forgotten without revocation; the password may still work: " + failure.describe(),
    )
    events.emit(
        "lease.revoke_failed",
        level=logging.WARNING,
        leaseId=lease.id,
        error="forgotten: " + failure.describe(),
    )
    return lease


async def revoke_lease(lease_id: str, caller: Caller, *, force: bool, reason: str = "") -> LeaseOut:
    """Revoke now. With `force`, a lease Azure refuses to revoke is forgotten instead of kept."""
    lease = await lease_record(lease_id)
    if lease.status in TERMINAL:
        return LeaseOut.from_record(lease)
    if lease.status == LeaseStatus.PENDING:
        raise Conflict("the lease is still being created; try again in a few seconds")
    if lease.status == LeaseStatus.REVOKING and due_time(lease) > clock.now():
        raise Conflict(f"the lease is being revoked by {lease.claimed_by}; read it again shortly")
    try:
        claimed = await claim(lease, f"api:{caller.id}")
    except ConcurrencyConflict:
        raise Conflict("the lease changed meanwhile (another revoke?); read it again") from None
    try:
        await reset_password(claimed)
    except AzureFailure as failure:
        if force:
            return LeaseOut.from_record(await forget_lease(claimed, failure, caller))
        failed = await record_failure(claimed, failure, caller)
        raise azure_problem(
            failure,
            leaseId=lease_id,
            leaseStatus=failed.status.value,
            nextAttemptAt=clock.isoformat(failed.next_attempt_at or clock.now()),
        ) from None
    detail = f"revoked by {caller.name}" + (f" ({reason})" if reason else "")
    return LeaseOut.from_record(await complete_revoke(claimed, caller.id, caller, detail=detail))


# ---------------------------------------------------------------------------- for the timers


async def due_entries(now: datetime, limit: int) -> list[IndexEntry]:
    """The due entries up to `now`, oldest first (only those rows are read)."""
    return await lease_rows.index_entries("due", now, limit=limit)


async def lease_to_sweep(entry: IndexEntry, now: datetime) -> Lease | str:
    """The lease a due entry points at if it must be revoked now; else what was done (an entry
    that no longer points at work is deleted) as a summary word."""
    lease = await lease_rows.get_lease(entry.lease_id)
    if lease is None:
        if now - entry.created_at > 2 * RECONCILE_AFTER:  # no create can still be writing it
            await records.delete(entry, conditional=False)
            return "orphans"
        return "skipped"
    if lease.status in TERMINAL:
        await records.delete(entry, conditional=False)
        return "stale"
    if lease.status == LeaseStatus.PENDING:
        return "skipped"  # its create is running, or the reconciler will resolve it
    if due_time(lease) > now:
        if entry.key != lease.due_key:  # renewed, or retried later: the entry is left over
            await records.delete(entry, conditional=False)
            return "stale"
        return "skipped"  # claimed by a live sweeper, or not due yet
    return lease


async def revoke(lease: Lease, holder: str, *, until: datetime | None = None, detail: str = "") -> str:
    """Claim, reset and record a lease for a timer: `revoked`, `failed` (recorded with backoff)
    or `lost` (someone else claimed it first)."""
    try:
        claimed = await claim(lease, holder)
    except ConcurrencyConflict:
        return "lost"
    try:
        await reset_password(claimed, until=until)
    except AzureFailure as failure:
        await record_failure(claimed, failure, audit.SYSTEM)
        return "failed"
    await complete_revoke(claimed, "sweeper", audit.SYSTEM, detail=detail or f"expired; revoked by {holder}")
    return "revoked"


async def stale_intents(limit: int) -> list[IndexEntry]:
    """Intents older than RECONCILE_AFTER: creates that died part-way (they take seconds)."""
    return await lease_rows.index_entries("intent", clock.now() - RECONCILE_AFTER, limit=limit)


async def resolve_intent(intent: IndexEntry) -> str:
    """Finish or undo one stale create; returns what was done (see leases.reconciler)."""
    lease = await lease_rows.get_lease(intent.lease_id)
    if lease is None:
        name, _ = lease_rows.split_lease_id(intent.lease_id) or ("", "")
        await lease_rows.release_claim(name, intent.lease_id)
        await lease_rows.delete_index(intent.lease_id, *(k for k in (intent.due_key, intent.key) if k))
        return "cleared"
    ours = lease.status == LeaseStatus.REVOKING and lease.claimed_by == RECONCILER
    if lease.status == LeaseStatus.PENDING or (ours and due_time(lease) <= clock.now()):
        try:
            claimed = await claim(lease, RECONCILER)
        except ConcurrencyConflict:
            return "raced"  # the create finished (or another reconciler took it) meanwhile
        try:
            await reset_password(claimed)
        except AzureFailure as failure:
            # Keep the claim until it expires: the next run retries. The lease stays visible.
            error = "reconcile: " + failure.describe()
            events.emit("lease.revoke_failed", level=logging.WARNING, leaseId=lease.id, error=error)
            return "failed"
        detail = "create interrupted; password reset by the reconciler"
        await complete_revoke(claimed, RECONCILER, audit.SYSTEM, detail=detail)
        await records.delete(intent, conditional=False)
        events.emit("reconcile.fixed", leaseId=lease.id, userId=lease.user_id, action="password_reset")
        return "fixed"
    if ours:
        return "skipped"  # a live reconciler claim
    await records.delete(intent, conditional=False)
    return "finished"


async def purge_entries(retention: timedelta, limit: int) -> list[IndexEntry]:
    """Purge entries of leases revoked longer than `retention` ago."""
    return await lease_rows.index_entries("purge", clock.now() - retention, limit=limit)


async def purge(entry: IndexEntry) -> str:
    """Delete a terminal lease past retention (ETag-checked) and its purge entry."""
    lease = await lease_rows.get_lease(entry.lease_id)
    if lease is not None and lease.status in TERMINAL:
        try:
            await records.delete(lease)
        except ConcurrencyConflict:
            return "raced"
        await records.delete(entry, conditional=False)
        return "purged"
    await records.delete(entry, conditional=False)  # the lease is gone or (oddly) alive: not our work
    return "stale"
