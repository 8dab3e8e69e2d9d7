"""Secret-rotation cost: the rotation timer among 10,000 secret rotations of which 10 are due.

Runs the broker's services in-process against Azurite and the Azure stand-in. Ten real secret
rotations (each a target app owned by one connection's app) are created and rotated once by the
timer (so each has a previous secret); 9,990 idle rows with their due entries are seeded directly.
The measured timer run rotates the ten: entities read, table operations, and Azure requests per
rotation next to the minimum (addPassword, one token for the target, removePassword).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from bench.rotation import DUE, SEED_CONCURRENCY, TOTAL, _kind, with_stand_ins
from bench.table import Table


async def _connection(fake: Any) -> tuple[str, Any, Any]:
    from pydantic import SecretStr

    from connections import client_secrets, lifecycle
    from connections.fields import ClientSecretCredentials
    from core.auth import Caller, Role

    caller = Caller(id="bench", name="bench", roles=frozenset({Role.ADMIN}))
    tenant = fake.add_tenant()
    app = fake.add_application(
        tenant, "bench-rotator", permissions=["Application.ReadWrite.OwnedBy"], owned_by_itself=True
    )
    _, secret = fake.add_password(app, display_name="original")
    credentials = ClientSecretCredentials(
        tenant_id=tenant.id, client_id=app.app_id, client_secret=SecretStr(secret)
    )
    record, _ = await lifecycle.create(
        client_secrets.SPEC, f"bench-{uuid.uuid4().hex[:10]}", None, "client-secret", credentials, caller
    )
    return record.id, tenant, app


async def _seed(count: int, far_from: Any) -> None:
    from core import clock, records, tables
    from rotation import store
    from rotation.secret_records import DUE_PARTITION, SecretRotationRecord

    rows = []
    for n in range(count):
        nxt = clock.isoformat(far_from + timedelta(days=60 + n % 300, minutes=n % 1440))
        rid = str(uuid.uuid4())
        rows.append(
            SecretRotationRecord(
                id=rid,
                connection_id=str(uuid.uuid4()),
                application_id=str(uuid.uuid4()),
                app_object_id=str(uuid.uuid4()),
                enabled=True,
                interval_days=90,
                rotate_at="02:00",
                secret_lifetime_days=183,
                client_secret_key_id=str(uuid.uuid4()),
                next_rotation_at=nxt,
                index_key=store.index_key(nxt, rid),
            )
        )
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def insert(record: SecretRotationRecord) -> None:
        async with gate:
            await records.insert(record)

    async def index_batch(chunk: list[SecretRotationRecord]) -> None:
        async with gate:
            entries = [
                ("upsert", DUE_PARTITION, r.index_key or "", {"connectionId": r.id}, None) for r in chunk
            ]
            await tables.batch(store.INDEX_TABLE, entries)

    await asyncio.gather(*(insert(r) for r in rows))
    for i in range(0, len(rows), 100):  # one batch at a time: Azurite drops concurrent $batch bodies
        await index_batch(rows[i : i + 100])


async def _measure(fake: Any) -> list[Table]:
    from core import clock, tables
    from core.audit import SYSTEM
    from rotation import secret_service
    from rotation.secret_models import SecretRotationCreate
    from rotation.timer import rotate_due_secret_rotations

    connection_id, tenant, rotator = await _connection(fake)
    made = []
    for n in range(DUE):
        target = fake.add_application(tenant, f"bench-target-{n}")
        fake.add_owner(target, rotator)
        body = SecretRotationCreate(
            name=f"t{n}",
            connection_id=connection_id,
            application_id=uuid.UUID(target.app_id),
            interval_days=7,
            rotate_at="02:00",
        )
        made.append(await secret_service.create(body, SYSTEM))
    clock.advance(timedelta(days=9))
    warm = await rotate_due_secret_rotations()  # each now has a current and a previous secret
    assert warm.get("rotated") == DUE, warm
    await _seed(TOTAL - DUE, clock.now())
    clock.advance(timedelta(days=9))
    fake.reset_counters()
    tables.stats.reset()
    started = time.perf_counter()
    summary = await rotate_due_secret_rotations()
    elapsed = time.perf_counter() - started
    assert summary.get("rotated") == DUE, summary
    calls = Counter(_kind(r.service, r.method, r.path) for r in fake.request_log())
    graph = Counter(k for k in calls.elements() if k.startswith("graph"))
    per = {k: n / DUE for k, n in calls.items()}
    rows = [
        ["secret rotations / due", f"{TOTAL:,} / {DUE}", "", ""],
        ["table entities read (run)", str(tables.stats.entities_read), f"~{2 * DUE}", "due entries + rows"],
        ["table operations (run)", str(tables.stats.operations), "", "steps recorded, index moved, audit"],
        [
            "Graph requests per rotation",
            f"{sum(graph.values()) / DUE:.1f}",
            "2",
            "addPassword, removePassword",
        ],
        [
            "token requests per rotation",
            f"{per.get('token POST /{id}/oauth2/v2.0/token', 0):.1f}",
            "1",
            "the new secret, target app",
        ],
        ["wall time (s)", f"{elapsed:.2f}", "", f"{DUE} rotations, stand-in on loopback"],
    ]
    detail = [[kind, f"{n / DUE:.1f}"] for kind, n in sorted(calls.items())]
    for record in made:
        await secret_service.delete(record.id, SYSTEM, keep_secrets=False, if_match=None)
    clock.reset()
    return [
        (
            f"Secret rotation timer among {TOTAL:,} secret rotations, {DUE} due",
            ["measure", "measured", "minimum", "what"],
            rows,
        ),
        ("Secret rotation: Azure requests per rotation", ["request", "per rotation"], detail),
    ]


def run() -> list[Table]:
    return with_stand_ins(_measure, "bench-secret-rotation-")


if __name__ == "__main__":
    from bench.table import render

    for title, headers, rows in run():
        print(render(title, headers, rows), flush=True)
