"""Rotation cost: Azure calls and table operations per rotation, and finding due connections.

Runs the broker's services in-process against Azurite and the Azure stand-in:

1. One scheduled rotation (the timer rotating one due connection), counted by the stand-in
   (Graph, token, Key Vault requests) and by `core.tables.stats`, next to the protocol minimum.
2. One timer run among 10,000 rotation rows of which 10 are due: the 9,990 others are seeded
   directly (index rows in batches of 100); entities read and wall time of the run, of the
   due-index read alone, and of a reconciler run on the same data.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.table import Table

# As function_app wires it: connections and rotation meet only through core.connection_seam.
WIRING = ("connections.access", "rotation.hooks")

TOTAL = 10_000
DUE = 10
SEED_CONCURRENCY = 64


def _environment(fake: Any, azurite: Any) -> None:
    broker_tenant = fake.add_tenant(domain="broker.example.com")
    identity = fake.add_application(broker_tenant, "broker-identity", permissions=[])
    _, identity_secret = fake.add_password(identity, display_name="broker identity")
    os.environ.update(
        {
            "TABLES_CONNECTION_STRING": azurite.connection_string,
            "TABLE_PREFIX": "bench",
            "KEY_VAULT_URL": fake.key_vault_url,
            "AZURE_AUTHORITY_HOST": fake.authority_host,
            "GRAPH_ENDPOINT": fake.graph_endpoint,
            "AZURE_DEVOPS_ENDPOINT": fake.devops_endpoint,
            "AUTH_MODE": "local",
            "LOCAL_API_TOKEN": "bench-rotation-token-of-at-least-32-chars",
            "AZURE_TENANT_ID": broker_tenant.id,
            "AZURE_CLIENT_ID": identity.app_id,
            "AZURE_CLIENT_SECRET": identity_secret,
        }
    )
    from core import connection_seam
    from core.settings import get_settings

    get_settings.cache_clear()
    connection_seam.wire(WIRING)


async def _connection(fake: Any, interval_days: int) -> str:
    """A real client-secret connection with rotation on (its first rotation runs on create)."""
    from pydantic import SecretStr

    from connections import client_secrets, lifecycle
    from connections.fields import ClientSecretCredentials
    from core.auth import Caller, Role
    from rotation.service import RotationSettings, RotationView

    caller = Caller(id="bench", name="bench", roles=frozenset({Role.ADMIN}))
    tenant = fake.add_tenant()
    app = fake.add_application(
        tenant, "bench-app", permissions=["Application.ReadWrite.OwnedBy"], owned_by_itself=True
    )
    key_id, secret = fake.add_password(app, display_name="original")
    settings = RotationSettings(
        enabled=True, client_secret_key_id=uuid.UUID(key_id), interval_days=interval_days, rotate_at="02:00"
    )
    record, view = await lifecycle.create(
        client_secrets.SPEC,
        f"bench-{uuid.uuid4().hex[:10]}",
        None,
        "client-secret",
        ClientSecretCredentials(tenant_id=tenant.id, client_id=app.app_id, client_secret=SecretStr(secret)),
        caller,
        settings,
    )
    assert isinstance(view, RotationView)
    assert view.status == "scheduled", view.last_error
    return record.id


class _PerTable:
    """Counts `core.tables` calls per table while installed (the core counters do not split them)."""

    NAMES = ("get", "insert", "replace", "upsert", "delete", "query", "batch")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> _PerTable:
        from core import tables

        for name in self.NAMES:
            real = getattr(tables, name)
            self._saved[name] = real
            setattr(tables, name, self._wrap(name, real))
        return self

    def _wrap(self, name: str, real: Any) -> Any:
        def counted(first: Any, *args: Any, **kwargs: Any) -> Any:
            table = first.table if name == "replace" else first
            self.counts[table] += 1
            return real(first, *args, **kwargs)

        return counted

    def __exit__(self, *exc: object) -> None:
        from core import tables

        for name, real in self._saved.items():
            setattr(tables, name, real)


def _kind(service: str, method: str, path: str) -> str:
    path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", path)
    path = re.sub(r"/secrets/[^/]+", "/secrets/{name}", path)
    path = re.sub(r"/deletedsecrets/[^/]+", "/deletedsecrets/{name}", path)
    path = re.sub(r"appId='[^']+'", "appId='{appId}'", path)
    return f"{service} {method} {path}"


async def _one_rotation(fake: Any) -> list[Table]:
    from core import clock, tables
    from rotation.timer import rotate_due_connections

    connection_id = await _connection(fake, interval_days=1)
    clock.advance(timedelta(days=2))
    await rotate_due_connections()  # warm: clients, tables, caches as a running worker has them
    clock.advance(timedelta(days=2))
    fake.reset_counters()
    tables.stats.reset()
    started = time.perf_counter()
    with _PerTable() as per_table:
        summary = await rotate_due_connections()
    elapsed = time.perf_counter() - started
    assert summary.get("rotated") == 1, summary
    own = per_table.counts["Rotations"] + per_table.counts["RotationDue"]
    others = ", ".join(
        f"{t} {n}" for t, n in sorted(per_table.counts.items()) if t not in ("Rotations", "RotationDue")
    )
    calls = Counter(_kind(r.service, r.method, r.path) for r in fake.request_log())
    by_service = Counter(k.split(" ", 1)[0] for k in calls.elements())
    ops = dict(tables.stats.by_kind)
    rows = [
        ["Graph requests", str(by_service["graph"]), "2", "addPassword, removePassword(old)"],
        [
            "token requests",
            str(by_service["token"]),
            "1",
            "prove the new secret; +1 for the Graph client on the new secret (cache dropped on switch)",
        ],
        [
            "Key Vault requests",
            str(by_service["keyvault"]),
            "4",
            "pending set/delete, connection secret set/delete (+ the SDK's polls and the re-read)",
        ],
        [
            "table operations: rotation's own",
            str(own),
            "9",
            "due query, row get, 5 step records (planned, added, verified, stored, done), index move (2)",
        ],
        [
            "table operations: all",
            str(tables.stats.operations),
            "",
            f"+ the connection's reads/switch and the audit entry: {others}",
        ],
        ["  all, by kind", ", ".join(f"{k} {v}" for k, v in sorted(ops.items())), "", ""],
        [
            "table entities read",
            str(tables.stats.entities_read),
            "2",
            "the due index entry and the row (+ the connection row, read by its service)",
        ],
        ["wall time (s)", f"{elapsed:.2f}", "", "stand-in on loopback, no replication delay"],
    ]
    detail = [[kind, str(n)] for kind, n in sorted(calls.items())]
    await _forget(connection_id)
    clock.reset()
    return [
        (
            "Rotation: cost of one scheduled rotation (timer run with 1 due connection)",
            ["measure", "measured", "protocol minimum", "what"],
            rows,
        ),
        ("Rotation: Azure requests of that rotation", ["request", "count"], detail),
    ]


async def _forget(connection_id: str) -> None:
    """Remove the rotation (and the broker-made secret), and close the connection's cached client."""
    from connections import kinds, store
    from connections.client_secrets import KIND, SPEC
    from rotation.cleanup import forget

    record = await store.get_record(KIND, connection_id)
    await forget(connection_id, record.client_id or "")
    await kinds.invalidate(SPEC, record)


async def _seed(count: int, far_from: Any) -> float:
    """`count` idle rotation rows due 60-400 days from `far_from`, index rows batched."""
    from core import clock, tables
    from rotation import store

    started = time.perf_counter()
    records = []
    for n in range(count):
        cid = str(uuid.uuid4())
        nxt = clock.isoformat(far_from + timedelta(days=60 + n % 340, minutes=n % 1440))
        records.append(
            store.RotationRecord(
                connection_id=cid,
                enabled=True,
                client_secret_key_id=str(uuid.uuid4()),
                interval_days=90,
                rotate_at="02:00",
                app_object_id=str(uuid.uuid4()),
                next_rotation_at=nxt,
                index_key=store.index_key(nxt, cid),
            )
        )
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def insert(record: store.RotationRecord) -> None:
        async with gate:
            await tables.insert(store.TABLE, record.connection_id, store.ROW_KEY, record.to_data())

    async def index_batch(chunk: list[store.RotationRecord]) -> None:
        async with gate:
            await tables.batch(
                store.INDEX_TABLE,
                [
                    ("upsert", store.INDEX_PK, r.index_key or "", {"connectionId": r.connection_id}, None)
                    for r in chunk
                ],
            )

    await asyncio.gather(*(insert(r) for r in records))
    await asyncio.gather(*(index_batch(records[i : i + 100]) for i in range(0, len(records), 100)))
    return time.perf_counter() - started


async def _due_among_many(fake: Any) -> list[Table]:
    from core import clock, tables
    from rotation import store
    from rotation.reconciler import reconcile_rotations
    from rotation.timer import rotate_due_connections

    due_ids = [await _connection(fake, interval_days=7) for _ in range(DUE)]
    seed_seconds = await _seed(TOTAL - DUE, clock.now())
    clock.advance(timedelta(days=9))  # the ten real connections fall due; the rest stay months away

    tables.stats.reset()
    started = time.perf_counter()
    found = await store.due(clock.now(), limit=1000)
    find_seconds = time.perf_counter() - started
    find_read = tables.stats.entities_read
    assert len(found) == DUE, len(found)

    tables.stats.reset()
    fake.reset_counters()
    started = time.perf_counter()
    summary = await rotate_due_connections()
    run_seconds = time.perf_counter() - started
    run_read, run_ops = tables.stats.entities_read, tables.stats.operations
    assert summary.get("rotated") == DUE, summary

    tables.stats.reset()
    started = time.perf_counter()
    await reconcile_rotations()
    reconcile_seconds = time.perf_counter() - started
    reconcile_read = tables.stats.entities_read
    addpw = fake.request_count("graph", "addPassword")
    for cid in due_ids:
        await _forget(cid)
    clock.reset()
    rows = [
        [
            "rotation rows / due",
            f"{TOTAL:,} / {DUE}",
            f"seeded in {seed_seconds:.1f}s (index in batches of 100)",
        ],
        ["find due (index range read)", f"{find_read} entities", f"{find_seconds * 1000:.0f} ms"],
        [
            "timer run (find + claim + rotate)",
            f"{run_read} entities, {run_ops} table ops",
            f"{run_seconds:.2f} s for {DUE} rotations ({addpw} addPassword)",
        ],
        ["reconciler run", f"{reconcile_read} entities", f"{reconcile_seconds * 1000:.0f} ms"],
    ]
    return [
        (
            f"Rotation timer among {TOTAL:,} connections, {DUE} due (goal: read ~{DUE}, not {TOTAL:,})",
            ["measure", "reads", "time"],
            rows,
        )
    ]


def with_stand_ins(measure: Callable[[Any], Awaitable[list[Table]]], prefix: str) -> list[Table]:
    """Run `measure(fake)` against a fresh Azurite and Azure stand-in, wired as function_app wires it."""
    from tests.azure_fake import start_fake_azure
    from tests.azurite import start_azurite

    with tempfile.TemporaryDirectory(prefix=prefix) as location:
        azurite = start_azurite(Path(location), log_file=Path(location) / "azurite.log")
        fake = start_fake_azure()
        try:
            _environment(fake, azurite)
            return asyncio.run(measure(fake))
        finally:
            fake.stop()
            azurite.stop()


def run() -> list[Table]:
    async def main(fake: Any) -> list[Table]:
        return [*await _one_rotation(fake), *await _due_among_many(fake)]

    return with_stand_ins(main, "bench-rotation-")


if __name__ == "__main__":
    from bench.table import render

    for title, headers, rows in run():
        print(render(title, headers, rows), flush=True)
