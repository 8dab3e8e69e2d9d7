"""Table Storage access against Azurite: ETag concurrency, batches, time-ordered queries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from core import tables
from core.tables import ConcurrencyConflict, RowExists
from tests.harness import ServerHandle
from tests.table_stats import stats

TABLE = "TestRows"


def pk() -> str:
    return uuid.uuid4().hex


def test_insert_then_read_round_trips(broker: ServerHandle) -> None:
    key = pk()
    broker.run(tables.insert(TABLE, key, "a", {"name": "one", "count": 3, "empty": None}))
    row = broker.run(tables.get(TABLE, key, "a"))
    assert row is not None
    assert row.data == {"name": "one", "count": 3}
    assert row.etag
    assert broker.run(tables.get(TABLE, key, "missing")) is None


def test_a_taken_key_is_refused(broker: ServerHandle) -> None:
    key = pk()
    broker.run(tables.insert(TABLE, key, "a", {"v": 1}))
    with pytest.raises(RowExists):
        broker.run(tables.insert(TABLE, key, "a", {"v": 2}))


def test_stale_etag_loses_the_race(broker: ServerHandle) -> None:
    key = pk()
    broker.run(tables.insert(TABLE, key, "a", {"v": 1}))
    first = broker.run(tables.get(TABLE, key, "a"))
    second = broker.run(tables.get(TABLE, key, "a"))
    assert first is not None
    assert second is not None
    broker.run(tables.replace(first, {"v": 2}))
    with pytest.raises(ConcurrencyConflict):
        broker.run(tables.replace(second, {"v": 3}))
    with pytest.raises(ConcurrencyConflict):
        broker.run(tables.delete(TABLE, key, "a", etag=second.etag))
    final = broker.run(tables.get(TABLE, key, "a"))
    assert final is not None
    assert final.data == {"v": 2}


def test_two_concurrent_claims_one_wins(broker: ServerHandle) -> None:
    key = pk()
    broker.run(tables.insert(TABLE, key, "a", {"owner": ""}))

    async def claim(row: tables.Row | None, owner: str) -> str:
        assert row is not None
        try:
            await tables.replace(row, {"owner": owner})
        except ConcurrencyConflict:
            return "lost"
        return "won"

    async def both() -> list[str]:
        # Both read before either writes (a claim that read after the other's write may rightly win).
        first, second = await asyncio.gather(tables.get(TABLE, key, "a"), tables.get(TABLE, key, "a"))
        return list(await asyncio.gather(claim(first, "x"), claim(second, "y")))

    assert sorted(broker.run(both())) == ["lost", "won"]


def test_batch_is_atomic_within_a_partition(broker: ServerHandle) -> None:
    key = pk()
    broker.run(tables.insert(TABLE, key, "exists", {"v": 1}))
    with pytest.raises(ConcurrencyConflict):
        broker.run(
            tables.batch(
                TABLE, [("create", key, "new", {"v": 1}, None), ("create", key, "exists", {"v": 2}, None)]
            )
        )
    assert broker.run(tables.get(TABLE, key, "new")) is None
    broker.run(tables.batch(TABLE, [("create", key, f"r{i:03d}", {"v": i}, None) for i in range(100)]))
    assert len(broker.run(tables.partition(TABLE, key))) == 101


def test_time_ordered_keys_read_only_what_is_due(broker: ServerHandle) -> None:
    key = pk()
    times = [f"2026-11-23T10:{m:02d}:00Z" for m in range(0, 60, 5)]
    broker.run(
        tables.batch(TABLE, [("create", key, f"{t}_{i}", {"due": t}, None) for i, t in enumerate(times)])
    )

    async def due_before(limit: str) -> tuple[list[dict[str, Any]], int]:
        before = stats.entities_read
        rows = [
            r.data
            async for r in tables.query(
                TABLE, "PartitionKey eq @pk and RowKey lt @now", {"pk": key, "now": limit}
            )
        ]
        return rows, stats.entities_read - before

    rows, read = broker.run(due_before("2026-11-23T10:12:00Z"))
    assert [r["due"] for r in rows] == times[:3]
    assert read == 3


def test_product_code_carries_no_counters() -> None:
    """The counters are a test/bench observer; core.tables itself keeps none."""
    import ast
    from pathlib import Path

    source = Path(tables.__file__).read_text()
    names = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    assert "stats" not in names
    assert "TableStats" not in source
