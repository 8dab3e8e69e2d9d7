"""The lease reconciler and the retention purge (both on `reconcile_timer`).

`reconcile_leases` resolves intents older than `service.RECONCILE_AFTER`, i.e. creates that
died part-way (they take seconds):
- no lease row: the create died before writing it, so nothing was set in Azure; the claim
  (if it names this lease) and the index entries are removed;
- a `pending` lease: the password may have been set and nobody holds it. The reconciler
  claims the lease (ETag: a create finishing late then fails instead of handing out a
  password), sets an unknown random password and records the lease as revoked;
- any other state: the create finished but for deleting its intent, which goes now.

`purge_old_leases` deletes revoked / forgotten leases older than LEASE_RETENTION_DAYS, read
from their `purge_` index entries (no scan of the lease table).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from core import audit, clock, events
from core.azure_failure import AzureFailure
from core.settings import get_settings
from core.tables import ConcurrencyConflict, Row
from leases import revoking, service, store
from leases.models import TERMINAL, LeaseStatus

log = logging.getLogger(__name__)

HOLDER = "reconciler"
MAX_PER_RUN = 500
CONCURRENCY = 8


async def resolve_intent(entry: Row) -> str:
    """Finish or undo one stale create; returns what was done."""
    lease_id = str(entry.data.get("leaseId"))
    due_key = str(entry.data.get("dueKey", ""))
    name, _ = store.split_lease_id(lease_id) or ("", "")
    row = await store.get_lease(lease_id)
    if row is None:
        await store.release_claim(name, lease_id)
        await store.delete_index(lease_id, *(k for k in (due_key, entry.rk) if k))
        return "cleared"
    status = row.data["status"]
    ours = status == LeaseStatus.REVOKING.value and row.data.get("claimedBy") == HOLDER
    if status == LeaseStatus.PENDING.value or (ours and revoking.due_time(row) <= clock.now()):
        try:
            claimed = await revoking.claim_for_revoke(row, HOLDER)
        except ConcurrencyConflict:
            return "raced"  # the create finished (or another reconciler took it) meanwhile
        try:
            await revoking.reset_password(claimed)
        except AzureFailure as failure:
            # Keep the claim until it expires: the next run retries. The lease stays visible.
            events.emit(
                "lease.revoke_failed",
                level=logging.WARNING,
                leaseId=lease_id,
                error="reconcile: " + failure.describe(),
            )
            return "failed"
        await revoking.complete_revoke(
            claimed, HOLDER, audit.SYSTEM, detail="create interrupted; password reset by the reconciler"
        )
        await store.delete_index(lease_id, entry.rk)
        events.emit("reconcile.fixed", leaseId=lease_id, userId=row.data["userId"], action="password_reset")
        return "fixed"
    if ours:
        return "skipped"  # a live reconciler claim
    await store.delete_index(lease_id, entry.rk)
    return "finished"


async def reconcile_leases() -> dict[str, Any]:
    cutoff = clock.now() - service.RECONCILE_AFTER
    entries = await store.index_entries("intent", cutoff, limit=MAX_PER_RUN)
    return await _each(entries, resolve_intent)


async def purge_one(entry: Row) -> str:
    lease_id = str(entry.data.get("leaseId"))
    row = await store.get_lease(lease_id)
    if row is not None and row.data.get("status") in TERMINAL:
        try:
            await store.delete_lease(row)
        except ConcurrencyConflict:
            return "raced"
        await store.delete_index(lease_id, entry.rk)
        return "purged"
    await store.delete_index(lease_id, entry.rk)  # the lease is gone or (oddly) alive: not our work
    return "stale"


async def purge_old_leases() -> dict[str, Any]:
    cutoff = clock.now() - timedelta(days=get_settings().lease_retention_days)
    entries = await store.index_entries("purge", cutoff, limit=MAX_PER_RUN)
    return await _each(entries, purge_one)


async def _each(entries: list[Row], action: Any) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(CONCURRENCY)
    counts: dict[str, int] = {"seen": len(entries)}

    async def one(entry: Row) -> None:
        async with semaphore:
            try:
                outcome = await action(entry)
            except Exception as error:
                outcome = "errors"
                log.warning("lease job on %s failed: %s", entry.data.get("leaseId"), type(error).__name__)
            counts[outcome] = counts.get(outcome, 0) + 1

    await asyncio.gather(*(one(entry) for entry in entries))
    return counts
