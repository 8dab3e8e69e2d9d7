"""Inventory cost: Graph pages and table operations of one inventory run over a 250-app tenant.

Runs the timer step in-process against Azurite and the Azure stand-in, with one Client Secrets
connection (Application.Read.All) whose tenant has 250 apps: secrets ending in 5, 20 and 60 days,
expired ones, and a few certificates. Three runs: the first (every expiring credential written
and announced), the next hour's (nothing changed: no writes), and the next day's (each row's
daily `credential.expiring` is recorded, so every row is written once).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.rotation import _PerTable, with_stand_ins
from bench.table import Table

APPS = 250


async def _connection(fake: Any) -> tuple[str, int]:
    """A client-secret connection whose tenant has APPS seeded apps; (its id, credentials kept)."""
    from pydantic import SecretStr

    from connections import client_secrets, lifecycle
    from connections.fields import ClientSecretCredentials
    from core.auth import Caller, Role

    now = datetime.now(UTC)
    tenant = fake.add_tenant()
    apps = fake.add_applications(
        tenant,
        APPS,
        password_ends=lambda i: [
            now + timedelta(days=d) for d in ((5,), (20,), (60,), (-3,), (5, 60), ())[i % 6]
        ],
        certificate_ends=lambda i: [now + timedelta(days=10)] if i % 25 == 0 else [],
    )
    kept = sum(
        1
        for a in apps
        for c in [*a.password_credentials, *a.key_credentials]
        if c.end <= now + timedelta(days=30)
    )
    app = fake.add_application(tenant, "inventory-reader", permissions=["Application.Read.All"])
    _, secret = fake.add_password(app, display_name="original")
    caller = Caller(id="bench", name="bench", roles=frozenset({Role.ADMIN}))
    record, _ = await lifecycle.create(
        client_secrets.SPEC,
        f"bench-inventory-{uuid.uuid4().hex[:8]}",
        None,
        "client-secret",
        ClientSecretCredentials(tenant_id=tenant.id, client_id=app.app_id, client_secret=SecretStr(secret)),
        caller,
    )
    return record.id, kept


async def _measured_run(fake: Any) -> tuple[dict[str, Any], float, Counter[str], dict[str, int], int, int]:
    from core import tables
    from inventory.timer import scan_inventory

    fake.reset_counters()
    tables.stats.reset()
    started = time.perf_counter()
    with _PerTable() as per_table:
        summary = await scan_inventory()
    elapsed = time.perf_counter() - started
    requests = Counter(f"{r.service} {r.method}" for r in fake.request_log())
    pages = fake.request_count("graph", r"/applications$", "GET")
    return summary, elapsed, requests, dict(per_table.counts), pages, tables.stats.entities_read


async def _runs(fake: Any) -> list[Table]:
    from core import clock

    _, kept = await _connection(fake)
    rows = []
    for label, advance in (
        ("first run", None),
        ("next hour", timedelta(hours=1)),
        ("next day", timedelta(days=1)),
    ):
        if advance is not None:
            clock.advance(advance)
        summary, elapsed, requests, per_table, pages, read = await _measured_run(fake)
        assert summary.get("ok") == 1, summary
        inventory_ops = per_table.get("CredentialInventory", 0)
        rows.append(
            [
                label,
                str(pages),
                str(requests["token POST"]),
                str(inventory_ops),
                str(per_table.get("InventoryScans", 0)),
                ", ".join(
                    f"{t} {n}"
                    for t, n in sorted(per_table.items())
                    if not t.startswith(("Credential", "Inventory"))
                ),
                str(read),
                f"{elapsed:.2f}",
            ]
        )
    clock.reset()
    return [
        (
            f"Inventory: one run over {APPS + 1} apps, {kept} credentials expiring or expired"
            " (goal: 1 Graph page per 999 apps; table writes only for what changed, in batches of 100)",
            [
                "run",
                "Graph pages",
                "token requests",
                "CredentialInventory ops",
                "InventoryScans ops",
                "other tables",
                "entities read",
                "wall s",
            ],
            rows,
        )
    ]


def run() -> list[Table]:
    return with_stand_ins(_runs, "bench-inventory-")


if __name__ == "__main__":
    from bench.table import render

    for title, headers, rows in run():
        print(render(title, headers, rows), flush=True)
