"""The expiry sweeper (`lease_expiry_timer`): revoke every lease whose due entry has come.

Cost grows with the leases due, not with all leases: one RowKey range query per index shard
reads only `due_` entries up to now. Each lease is claimed with an ETag write
(`-> revoking`, `claimUntil`), so two sweepers running at once revoke it once; a claim whose
holder died is taken over once the claim and the longest call it allows have passed.
Revocations run with bounded concurrency through `core.azure_gateway`: a 429 pauses only its
own (tenant, app), so a throttled tenant never slows another; every retry and wait ends by the
lease's `claimUntil` (and the sweep's budget). A lease still failing then becomes
`revoke_failed` with its error and a backoff, and its due entry moves to the retry time.
Nothing is deleted but index entries that no longer point at work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from core import audit, azure_gateway, clock
from core.azure_failure import AzureFailure
from core.tables import ConcurrencyConflict, Row
from leases import revoking, service, store
from leases.models import TERMINAL, LeaseStatus

log = logging.getLogger(__name__)

CONCURRENCY = 16  # due entries read and decided at once
PER_APP = 4  # revocations in flight per (tenant, app): a throttled app holds at most these
REVOKING_AT_ONCE = 64  # revocations in flight in all
DEFER_WHEN_PAUSED = 2.0  # an app throttled for longer than this: its leases wait for the next sweep
MAX_PER_SWEEP = 5000  # due entries read per sweep; the rest wait for the next one
BUDGET_SECONDS = 240.0  # stop claiming new leases after this (the Functions timeout is 5-10 min)


class Lanes:
    """A sweep's concurrency: reads in one pool, Azure calls in one lane per (tenant, app)."""

    def __init__(self) -> None:
        self.reading = asyncio.Semaphore(CONCURRENCY)
        self.revoking = asyncio.Semaphore(REVOKING_AT_ONCE)
        self.apps: dict[tuple[str, str], asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def lane(self, key: tuple[str, str]) -> AsyncIterator[None]:
        async with self.apps.setdefault(key, asyncio.Semaphore(PER_APP)), self.revoking:
            yield


def _throttled(key: tuple[str, str]) -> bool:
    return azure_gateway.paused_for(key) > DEFER_WHEN_PAUSED


def _is_stale(entry: Row, row: Row, now: datetime) -> bool:
    """An entry the lease no longer points at, for a lease not due yet (renewed, retried later)."""
    return entry.rk != row.data.get("dueKey") and revoking.due_time(row) > now


async def sweep_one(entry: Row, now: datetime, holder: str, deadline: datetime, lanes: Lanes) -> str:
    """Act on one due entry; returns what happened (a summary key)."""
    lease_id = str(entry.data.get("leaseId"))
    async with lanes.reading:
        row = await store.get_lease(lease_id)
    if row is None:
        created = service.parse_time(entry.data.get("createdAt"))
        if now - created > 2 * service.RECONCILE_AFTER:  # no create can still be writing it
            await store.delete_index(lease_id, entry.rk)
            return "orphans"
        return "skipped"
    status = row.data["status"]
    if status in TERMINAL:
        await store.delete_index(lease_id, entry.rk)
        return "stale"
    if status == LeaseStatus.PENDING.value:
        return "skipped"  # its create is running, or the reconciler will resolve it
    if revoking.due_time(row) > now:
        if _is_stale(entry, row, now):
            await store.delete_index(lease_id, entry.rk)
            return "stale"
        return "skipped"  # claimed by a live sweeper, or not due yet
    key = (str(row.data["tenantId"]).lower(), str(row.data["applicationId"]).lower())
    if _throttled(key):
        return "deferred"
    async with lanes.lane(key):
        if clock.now() > deadline or _throttled(key):
            return "deferred"
        return await _revoke(row, holder, deadline)


async def _revoke(row: Row, holder: str, deadline: datetime) -> str:
    try:
        claimed = await revoking.claim_for_revoke(row, holder)
    except ConcurrencyConflict:
        return "lost"  # another sweeper (or a caller) claimed it first
    try:
        await revoking.reset_password(claimed, until=deadline)
    except AzureFailure as failure:
        await revoking.record_failure(claimed, failure, audit.SYSTEM)
        return "failed"
    await revoking.complete_revoke(claimed, "sweeper", audit.SYSTEM, detail=f"expired; revoked by {holder}")
    return "revoked"


async def sweep_expired_leases() -> dict[str, Any]:
    """Revoke every lease due now; returns counts (due, revoked, failed, lost, skipped, ...)."""
    started = time.monotonic()
    now = clock.now()
    deadline = now + timedelta(seconds=BUDGET_SECONDS)
    holder = f"sweeper-{uuid.uuid4().hex[:8]}"
    entries = await store.index_entries("due", now, limit=MAX_PER_SWEEP)
    lanes = Lanes()
    counts: Counter[str] = Counter()

    async def work(entry: Row) -> None:
        try:
            counts[await sweep_one(entry, now, holder, deadline, lanes)] += 1
        except Exception as error:  # one bad lease must not stop the sweep; its claim expires
            counts["errors"] += 1
            log.warning("sweeping %s failed: %s", entry.data.get("leaseId"), type(error).__name__)

    await asyncio.gather(*(work(entry) for entry in entries))
    return {"due": len(entries), **dict(counts), "seconds": round(time.monotonic() - started, 3)}
