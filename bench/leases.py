"""Lease cost and throughput: through the API, and the expiry sweeper among many leases.

Runs the broker as a real HTTP server (uvicorn in a thread, AUTH_MODE=local) against Azurite
and the Azure stand-in:

1. Leases created, then revoked, per second through the API (16 concurrent callers, one
   dynamic secret per user), and what each lease cost: Graph / token / Key Vault requests
   counted by the stand-in, table operations counted by `core.tables.stats`. A warm-up round
   first, as a running worker has its token and the apps' secrets cached.
2. A sweep of 1,000 expired among 20,000 active leases, seeded straight into the tables with
   batched writes: the 1,000 on real users of the stand-in, one dynamic secret each (claim +
   lease in one transaction); the 19,000 idle ones (due in days, never touched by the sweep,
   there to be *not read*) packed 100 per transaction. The sweep runs with the stand-in's
   Graph rate limit on: time, index entities read (goal: ~1,000, not 20,000), all entities
   read, revocations per second, and how many Graph requests were answered 429.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.table import Table
from core import tables

Counts = dict[str, str]

API_USERS = 200
CALLERS = 16
TOTAL = 20_000
DUE = 1_000
GRAPH_LIMIT = 25.0  # requests per second (token bucket, burst = one second's worth)
TOKEN = "bench-leases-token-of-at-least-32-characters"  # noqa: S105 (the local static token of this throwaway stack)


def _environment(fake: Any, azurite: Any, port: int) -> None:
    broker_tenant = fake.add_tenant(domain="broker.example.com")
    identity = fake.add_application(broker_tenant, "broker-identity", permissions=[])
    _, identity_secret = fake.add_password(identity, display_name="broker identity")
    os.environ.update(
        {
            "TABLES_CONNECTION_STRING": azurite.connection_string,
            "TABLE_PREFIX": "benchleases",
            "KEY_VAULT_URL": fake.key_vault_url,
            "AZURE_AUTHORITY_HOST": fake.authority_host,
            "GRAPH_ENDPOINT": fake.graph_endpoint,
            "AZURE_DEVOPS_ENDPOINT": fake.devops_endpoint,
            "SITE_URL": f"http://127.0.0.1:{port}",
            "AUTH_MODE": "local",
            "LOCAL_API_TOKEN": TOKEN,
            "AZURE_TENANT_ID": broker_tenant.id,
            "AZURE_CLIENT_ID": identity.app_id,
            "AZURE_CLIENT_SECRET": identity_secret,
        }
    )
    from core import azure_clients, secret_store, tables
    from core.settings import get_settings

    get_settings.cache_clear()
    tables.reset_clients()
    azure_clients.reset_clients()
    secret_store.reset_clients()


def _tenant(fake: Any, users: int) -> tuple[Any, Any, str, list[Any]]:
    tenant = fake.add_tenant(domain=f"{uuid.uuid4().hex[:8]}.bench.example.com")
    app = fake.add_application(
        tenant,
        "bench-leases",
        permissions=["User.ReadWrite.All", "Application.Read.All"],
        directory_roles=["User Administrator"],
    )
    _, secret = fake.add_password(app)
    people = [
        fake.add_user(tenant, f"u{n:05d}@{tenant.default_domain}", "Seed-Passw0rd!") for n in range(users)
    ]
    return tenant, app, secret, people


def _kind(service: str, method: str, path: str) -> str:
    import re

    path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", path)
    path = re.sub(r"/secrets/[^/]+", "/secrets/{name}", path)
    return f"{service} {method} {path}"


def _round(client: httpx.Client, names: list[str], fake: Any) -> tuple[float, float, Counts, Counts]:
    """Create a lease on every dynamic secret, then revoke them all: seconds and cost per lease."""

    def create(name: str) -> str:
        response = client.post(f"/api/v1/dynamic-secrets/{name}/leases", json={"ttl": "1h"})
        response.raise_for_status()
        return str(response.json()["lease"]["id"])

    def revoke(lease_id: str) -> None:
        response = client.delete(f"/api/v1/leases/{lease_id}")
        response.raise_for_status()
        assert response.json()["status"] == "revoked"

    fake.reset_counters()
    tables.stats.reset()
    with ThreadPoolExecutor(CALLERS) as pool:
        started = time.perf_counter()
        ids = list(pool.map(create, names))
        create_s = time.perf_counter() - started
        per_create = _per_lease(fake, len(names))
        started = time.perf_counter()
        list(pool.map(revoke, ids))
        revoke_s = time.perf_counter() - started
        per_revoke = _per_lease(fake, len(names))
    return create_s, revoke_s, per_create, per_revoke


def _per_lease(fake: Any, count: int) -> Counts:
    """Requests and table operations since the last call, per lease (then reset)."""
    by_service = Counter(r.service for r in fake.request_log())
    out = {s: f"{by_service[s] / count:g}" for s in ("graph", "token", "keyvault")}
    out["ops"] = f"{tables.stats.operations / count:g}"
    out["read"] = f"{tables.stats.entities_read / count:g}"
    out["kinds"] = ", ".join(f"{k} {v / count:g}" for k, v in sorted(tables.stats.by_kind.items()))
    fake.reset_counters()
    tables.stats.reset()
    return out


def _through_api(fake: Any, url: str) -> list[Table]:
    tenant, app, secret, people = _tenant(fake, API_USERS)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        names: list[str] = []
        for chunk in range(0, API_USERS, 100):
            body = {
                "prefix": "bench",
                "defaultTtl": "1h",
                "maxTtl": "4h",
                "tenantId": tenant.id,
                "applicationId": app.app_id,
                "clientSecret": secret,
                "users": [p.id for p in people[chunk : chunk + 100]],
            }
            response = client.post("/api/v1/dynamic-secrets", json=body)
            response.raise_for_status()
            names += [item["name"] for item in response.json()["items"]]
        cold = _round(client, names, fake)  # first lease of each dynamic secret: its secret is read
        warm = _round(client, names, fake)
    n = len(names)
    rows = [
        [label, f"{n / create_s:.0f}", f"{n / revoke_s:.0f}", f"{n} leases, {CALLERS} concurrent callers"]
        for label, (create_s, revoke_s, _, _) in (("first round (cold caches)", cold), ("second round", warm))
    ]
    per_create, per_revoke = warm[2], warm[3]
    cost_rows = [
        ["Graph requests", per_create["graph"], per_revoke["graph"], "1 / 1 (PATCH /users/{id})"],
        ["token requests", per_create["token"], per_revoke["token"], "0 / 0 (token cached per app)"],
        ["Key Vault requests", per_create["keyvault"], per_revoke["keyvault"], "0 / 0 (app secret cached)"],
        ["  in the first round", cold[2]["keyvault"], cold[3]["keyvault"], "1 / 0 (each secret read once)"],
        ["table operations", per_create["ops"], per_revoke["ops"], "incl. 1 audit entry"],
        ["  by kind", per_create["kinds"], per_revoke["kinds"], ""],
        ["table entities read", per_create["read"], per_revoke["read"], "1 (dynamic secret) / 1 (lease)"],
    ]
    return [
        (
            "Leases per second through the API (local stack: uvicorn, Azurite, stand-in; one process)",
            ["round", "created/s", "revoked/s", "how"],
            rows,
        ),
        ("Cost per lease (second round)", ["per lease", "create", "revoke", "goal"], cost_rows),
    ]


async def _seed(tenant_id: str, app_id: str, ref: str, due_users: list[Any]) -> float:
    """TOTAL active leases: DUE on real users expiring at +1 h, the rest idle for days."""
    from core import clock
    from leases import store

    now = clock.now()
    leases = []
    for n in range(TOTAL):
        if n < DUE:
            user = due_users[n]
            name, expires = f"bench-due-{n:05d}", now + timedelta(hours=1)
            user_id, upn = user.id, user.user_principal_name
        else:
            name = f"bench-idle-{n // 100:04d}"  # filler: 100 per partition
            expires = now + timedelta(days=1 + n % 6, minutes=n % 1440)
            user_id, upn = str(uuid.uuid4()), f"idle{n}@bench.example.com"
        lease_id = store.new_lease_id(name)
        leases.append(
            (
                lease_id,
                {
                    "leaseId": lease_id,
                    "dynamicSecretName": name,
                    "dynamicSecretId": name,
                    "tenantId": tenant_id,
                    "applicationId": app_id,
                    "credentialRef": ref,
                    "userId": user_id,
                    "userPrincipalName": upn,
                    "status": "active",
                    "createdAt": clock.isoformat(now),
                    "expiresAt": clock.isoformat(expires),
                    "maxExpiresAt": clock.isoformat(now + timedelta(days=7)),
                    "dueKey": store.index_key("due", clock.isoformat(expires), lease_id),
                    "attempts": 0,
                    "createdBy": "bench",
                },
            )
        )
    started = time.perf_counter()
    await store.seed_leases(leases)
    return time.perf_counter() - started


def _sweep(fake: Any, handle: Any) -> list[Table]:
    from core import clock
    from core.secret_store import secret_store
    from leases import store, sweeper

    tenant, app, secret, people = _tenant(fake, DUE)
    ref = "dynsecret-bench-seed-client-secret"
    handle.run(secret_store().set(ref, secret))
    seed_s = handle.run(_seed(tenant.id, app.app_id, ref, people), timeout=600)
    clock.advance(timedelta(hours=1, minutes=1))
    tables.stats.reset()
    started = time.perf_counter()
    found = handle.run(store.index_entries("due", clock.now()))
    index_s, index_read = time.perf_counter() - started, tables.stats.entities_read
    fake.set_graph_rate_limit(GRAPH_LIMIT)
    fake.reset_counters()
    tables.stats.reset()
    started = time.perf_counter()
    summary = handle.run(sweeper.sweep_expired_leases(), timeout=600)
    sweep_s = time.perf_counter() - started
    throttled = sum(1 for r in fake.request_log("graph") if r.status == 429)
    patches = fake.request_count("graph", r"/users/", "PATCH")
    fake.set_graph_rate_limit(None)
    clock.reset()
    revoked = summary.get("revoked", 0)
    rows = [
        ["leases active / due", f"{TOTAL:,} / {len(found):,}", f"seeded in {seed_s:.0f} s (batched writes)"],
        [
            "find due (index range reads)",
            f"{index_read:,} entities read",
            f"{index_s * 1000:.0f} ms, 16 shards",
        ],
        [
            "sweep (find, claim, revoke, record)",
            f"{tables.stats.entities_read:,} entities read, {tables.stats.operations:,} table ops",
            f"{sweep_s:.1f} s",
        ],
        [
            f"revocations at a Graph limit of {GRAPH_LIMIT:g} req/s",
            f"{revoked:,} revoked, {summary.get('failed', 0)} failed",
            f"{revoked / sweep_s:.1f} per second",
        ],
        [
            "Graph PATCH /users/{id}",
            f"{patches:,} sent",
            f"{throttled:,} answered 429 (Retry-After honoured)",
        ],
    ]
    title = (
        f"Expiry sweep: {DUE:,} expired among {TOTAL:,} active leases "
        f"(goal: read ~{DUE:,} entities, not {TOTAL:,})"
    )
    return [(title, ["measure", "value", "time / detail"], rows)]


def run() -> list[Table]:
    from core.azurite import free_port, start_azurite
    from tests.azure_fake import start_fake_azure
    from tests.harness import serve_in_thread

    with tempfile.TemporaryDirectory(prefix="bench-leases-") as location:
        azurite = start_azurite(Path(location), log_file=Path(location) / "azurite.log")
        fake = start_fake_azure()
        handle = None
        try:
            port = free_port()
            _environment(fake, azurite, port)
            import function_app

            handle = serve_in_thread(function_app.api, port)
            return [*_through_api(fake, handle.url), *_sweep(fake, handle)]
        finally:
            if handle is not None:
                handle.stop()  # closes every cached client of its loop
            fake.stop()
            azurite.stop()


if __name__ == "__main__":
    from bench.table import render

    for title, headers, rows in run():
        print(render(title, headers, rows), flush=True)
