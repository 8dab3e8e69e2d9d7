"""Seeding many leases straight into the tables (benchmarks only; not shipped with the product).

A partition (dynamic secret) holding one lease gets its claim row in the same transaction;
leases sharing a partition (bulk filler that is never swept) go 100 per transaction without
claims. Due entries go 100 per transaction per shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from core import tables
from leases.store import ACTIVE, LEASE_INDEX_TABLE, LEASES_TABLE, index_entry, shard_of


async def seed_leases(leases: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Write many active leases with batched writes."""
    by_partition: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    by_shard: dict[str, list[tables.BatchOp]] = {}
    for lease_id, data in leases:
        by_partition.setdefault(str(data["dynamicSecretName"]), []).append((lease_id, data))
        entry = index_entry(lease_id, str(data["createdAt"]))
        shard = shard_of(lease_id)
        by_shard.setdefault(shard, []).append(("create", shard, str(data["dueKey"]), entry, None))
    batches: list[tuple[str, list[tables.BatchOp]]] = []
    for name, rows in by_partition.items():
        ops: list[tables.BatchOp] = [("create", name, lease_id, data, None) for lease_id, data in rows]
        if len(rows) == 1:
            lease_id, data = rows[0]
            ops.append(("create", name, ACTIVE, {"leaseId": lease_id, "claimedAt": data["createdAt"]}, None))
        batches.extend((LEASES_TABLE, ops[i : i + 100]) for i in range(0, len(ops), 100))
    for ops in by_shard.values():
        batches.extend((LEASE_INDEX_TABLE, ops[i : i + 100]) for i in range(0, len(ops), 100))
    semaphore = asyncio.Semaphore(16)

    async def run(table: str, ops: list[tables.BatchOp]) -> None:
        async with semaphore:
            await tables.batch(table, ops)

    await asyncio.gather(*(run(table, ops) for table, ops in batches))
