"""Seeding many leases straight into the tables (benchmarks only; not shipped with the product).

A partition (dynamic secret) holding one lease gets its claim row in the same transaction;
leases sharing a partition (bulk filler that is never swept) go 100 per transaction without
claims. Due entries go 100 per transaction per shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from core import records
from core.records import BatchKind, Record
from leases.records import IndexEntry, Lease, LeaseClaim

Ops = list[tuple[BatchKind, Record]]


async def seed_leases(leases: Iterable[Lease]) -> None:
    """Write many active leases with batched writes."""
    by_partition: dict[str, Ops] = {}
    by_shard: dict[str, Ops] = {}
    for lease in leases:
        by_partition.setdefault(lease.pk, []).append(("create", lease))
        due = IndexEntry.of("due", lease.expires_at, lease)
        by_shard.setdefault(due.shard, []).append(("create", due))
    batches: list[Ops] = []
    for ops in by_partition.values():
        only = ops[0][1]
        if len(ops) == 1 and isinstance(only, Lease):
            ops.append(("create", LeaseClaim(name=only.pk, lease_id=only.id, claimed_at=only.created_at)))
        batches.extend(_chunks(ops))
    for ops in by_shard.values():
        batches.extend(_chunks(ops))
    semaphore = asyncio.Semaphore(16)

    async def run(ops: Ops) -> None:
        async with semaphore:
            await records.batch(ops)

    await asyncio.gather(*(run(ops) for ops in batches))


def _chunks(ops: Sequence[tuple[BatchKind, Record]]) -> list[Ops]:
    return [list(ops[i : i + 100]) for i in range(0, len(ops), 100)]
