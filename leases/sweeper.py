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

from core import clock, pacing
from leases import revoking
from leases.records import IndexEntry

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
    return pacing.paused_for(key) > DEFER_WHEN_PAUSED


async def sweep_one(entry: IndexEntry, now: datetime, holder: str, deadline: datetime, lanes: Lanes) -> str:
    """Act on one due entry; returns what happened (a summary key)."""
    async with lanes.reading:
        lease = await revoking.lease_to_sweep(entry, now)
    if isinstance(lease, str):
        return lease
    if _throttled(lease.app):
        return "deferred"
    async with lanes.lane(lease.app):
        if clock.now() > deadline or _throttled(lease.app):
            return "deferred"
        return await revoking.revoke(lease, holder, until=deadline)


async def sweep_expired_leases() -> dict[str, Any]:
    """Revoke every lease due now; returns counts (due, revoked, failed, lost, skipped, ...)."""
    started = time.monotonic()
    now = clock.now()
    deadline = now + timedelta(seconds=BUDGET_SECONDS)
    holder = f"sweeper-{uuid.uuid4().hex[:8]}"
    entries = await revoking.due_entries(now, MAX_PER_SWEEP)
    lanes = Lanes()
    counts: Counter[str] = Counter()

    async def work(entry: IndexEntry) -> None:
        try:
            counts[await sweep_one(entry, now, holder, deadline, lanes)] += 1
        except Exception as error:  # one bad lease must not stop the sweep; its claim expires
            counts["errors"] += 1
            log.warning("sweeping %s failed: %s", entry.lease_id, type(error).__name__)

    await asyncio.gather(*(work(entry) for entry in entries))
    return {"due": len(entries), **dict(counts), "seconds": round(time.monotonic() - started, 3)}
