"""The expiry sweeper (`lease_expiry_timer`): revoke every lease whose due entry has come.

Cost grows with the leases due, not with all leases: one RowKey range query per index shard
reads only `due_` entries up to now. Each lease is claimed with an ETag write
(`-> revoking`, `claimUntil`), so two sweepers running at once revoke it once; a claim whose
holder died is taken over when it expires. Revocations run with bounded concurrency; a 429
pauses every worker of the sweep for its Retry-After (a shared gate, so a throttled tenant
is not hammered), a lease still failing after a few tries becomes `revoke_failed` with its
error and a backoff, and its due entry moves to the retry time. Nothing is deleted but
index entries that no longer point at work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from core import audit, clock
from core.tables import ConcurrencyConflict, Row
from leases import service, store
from leases.models import TERMINAL, LeaseStatus
from leases.provider import AzureFailure

log = logging.getLogger(__name__)

CONCURRENCY = 16
MAX_PER_SWEEP = 5000  # due entries read per sweep; the rest wait for the next one
BUDGET_SECONDS = 240.0  # stop claiming new leases after this (the Functions timeout is 5-10 min)
TRIES_PER_LEASE = 3  # Graph attempts per lease per sweep (throttling / 5xx / timeout)
RETRYABLE = {429, 503, 504}


class Gate:
    """Shared pause of a sweep's workers after a 429 (until its Retry-After has passed)."""

    def __init__(self) -> None:
        self.resume_at = 0.0

    async def wait(self) -> None:
        # A pause may be extended while sleeping (another 429): check again after each sleep.
        while (delay := self.resume_at - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        self.resume_at = max(self.resume_at, time.monotonic() + seconds)


async def _paced_reset(row: Row, gate: Gate, deadline: float) -> None:
    """Reset the password, pacing retries of throttled / transient failures through the gate."""
    for attempt in range(TRIES_PER_LEASE):
        await gate.wait()
        try:
            await service.reset_password(row, max_retries=0)
            return
        except AzureFailure as failure:
            retryable = failure.status in RETRYABLE or failure.code in ("timeout", "connection")
            wait = float(failure.retry_after or 2**attempt)
            last = attempt == TRIES_PER_LEASE - 1 or time.monotonic() + wait > deadline
            if not retryable or last:
                raise
            if failure.status == 429:
                gate.pause(wait)
            else:
                await asyncio.sleep(wait)


def _is_stale(entry: Row, row: Row, now: datetime) -> bool:
    """An entry the lease no longer points at, for a lease not due yet (renewed, retried later)."""
    return entry.rk != row.data.get("dueKey") and service.due_time(row) > now


async def sweep_one(entry: Row, now: datetime, holder: str, gate: Gate, deadline: float) -> str:
    """Act on one due entry; returns what happened (a summary key)."""
    lease_id = str(entry.data.get("leaseId"))
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
    if service.due_time(row) > now:
        if _is_stale(entry, row, now):
            await store.delete_index(lease_id, entry.rk)
            return "stale"
        return "skipped"  # claimed by a live sweeper, or not due yet
    if time.monotonic() > deadline:
        return "deferred"
    try:
        claimed = await service.claim_for_revoke(row, holder)
    except ConcurrencyConflict:
        return "lost"  # another sweeper (or a caller) claimed it first
    try:
        await _paced_reset(claimed, gate, deadline)
    except AzureFailure as failure:
        await service.record_failure(claimed, failure, audit.SYSTEM)
        return "failed"
    await service.complete_revoke(claimed, "sweeper", audit.SYSTEM, detail=f"expired; revoked by {holder}")
    return "revoked"


async def sweep_expired_leases() -> dict[str, Any]:
    """Revoke every lease due now; returns counts (due, revoked, failed, lost, skipped, ...)."""
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS
    now = clock.now()
    holder = f"sweeper-{uuid.uuid4().hex[:8]}"
    entries = await store.index_entries("due", now, limit=MAX_PER_SWEEP)
    gate = Gate()
    semaphore = asyncio.Semaphore(CONCURRENCY)
    counts: Counter[str] = Counter()

    async def work(entry: Row) -> None:
        async with semaphore:
            try:
                counts[await sweep_one(entry, now, holder, gate, deadline)] += 1
            except Exception as error:  # one bad lease must not stop the sweep; its claim expires
                counts["errors"] += 1
                log.warning("sweeping %s failed: %s", entry.data.get("leaseId"), type(error).__name__)

    await asyncio.gather(*(work(entry) for entry in entries))
    return {"due": len(entries), **dict(counts), "seconds": round(time.monotonic() - started, 3)}
