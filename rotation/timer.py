"""The rotation timer: rotate every connection whose next rotation is due.

Reads only the due entries of the `RotationDue` index (a RowKey range scan), not every
connection. Each due connection is claimed with an ETag write of its `Rotations` row before
anything happens in Azure, so two timer instances never rotate one connection twice. A
connection that missed several slots (downtime) has one index entry, so it rotates once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from core import clock

# At most this many connections per run (the rest are due in the next run, a minute later),
# and this many rotations at once (each may wait up to a minute on Entra replication), so a
# run stays well inside the Functions timeout even when every rotation waits the longest.
MAX_PER_RUN = 40
CONCURRENCY = 10


async def rotate_due_connections() -> dict[str, Any]:
    """Rotate the due connections; a summary of what happened to each due entry."""
    from rotation import runs, store

    now = clock.now()
    entries = await store.due(now, limit=MAX_PER_RUN)
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index_key: str, connection_id: str) -> None:
        async with gate:
            outcomes[await runs.process_due(connection_id, index_key, now)] += 1

    await asyncio.gather(*(one(entry.key, entry.connection_id) for entry in entries))
    return {"due": len(entries), **dict(sorted(outcomes.items()))}
