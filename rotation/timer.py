"""The rotation timer: rotate every connection whose next rotation is due.

Reads only the due entries of the `RotationDue` index (a RowKey range scan), not every
connection. Each due connection is claimed with an ETag write of its `Rotations` row before
anything happens in Azure, so two timer instances never rotate one connection twice. A
connection that missed several slots (downtime) has one index entry, so it rotates once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from core import clock

if TYPE_CHECKING:
    from rotation.runs import Loader

# At most this many connections per run (the rest are due in the next run, a minute later),
# and this many rotations at once (each may wait up to a minute on Entra replication), so a
# run stays well inside the Functions timeout even when every rotation waits the longest.
MAX_PER_RUN = 40
CONCURRENCY = 10


async def rotate_due_connections() -> dict[str, Any]:
    """Rotate the due connections; a summary of what happened to each due entry."""
    from rotation import store

    return await _rotate_due(store.INDEX_PK, store.load)


async def rotate_due_secret_rotations() -> dict[str, Any]:
    """Rotate the due secret rotations (their own partition of the index, the same engine)."""
    from rotation import secret_engine, secret_records  # noqa: F401 - registers the flavour

    return await _rotate_due(secret_records.DUE_PARTITION, secret_records.load)


async def _rotate_due(partition: str, load: Loader) -> dict[str, Any]:
    from rotation import runs, store

    now = clock.now()
    entries = await store.due(now, limit=MAX_PER_RUN, partition=partition)
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index_key: str, subject_id: str) -> None:
        async with gate:
            outcomes[await runs.process_due(subject_id, index_key, now, load, partition)] += 1

    await asyncio.gather(*(one(entry.key, entry.connection_id) for entry in entries))
    return {"due": len(entries), **dict(sorted(outcomes.items()))}
