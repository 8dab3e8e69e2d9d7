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
3. The sweep across tenants: 10 tenants x 100 due leases, each tenant's Graph limited to 20
   requests/s by the stand-in (per tenant, as Graph throttles per app and tenant), one tenant
   throttled hard (0.2 requests/s, Retry-After 5 s). Goal: the other nine all revoked within
   one sweep interval (60 s), at >= 90% of the sum of their limits (162 revocations/s).
   The same sweep without any limit first: what this machine can do at all. Two cores running
   the broker, Azurite and the stand-in stay far below 162/s, so the nine tenants' limits never
   bind there; the sweep is run a third time with each limited to 2 requests/s (a sum of 18/s,
   within this machine's reach), where the limits do bind and the 90% goal can be checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx

from bench.table import Table
from core import tables

if TYPE_CHECKING:
    from leases.records import Lease

Counts = dict[str, str]

API_USERS = 200
CALLERS = 16
TOTAL = 20_000
DUE = 1_000
GRAPH_LIMIT = 25.0  # requests per second (token bucket, burst = one second's worth)
TENANTS = 10
PER_TENANT = 100
TENANT_LIMIT = 20.0  # Graph requests per second per tenant
LIMIT_HERE = 2.0  # ... in the run whose limits bind on this machine (9 x 2 = 18/s)
HARD_LIMIT = 0.2  # the throttled tenant's
SWEEP_INTERVAL_S = 60.0
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
    from bench.lease_seed import seed_leases
    from core import clock

    now = clock.now()
    leases = []
    for n in range(TOTAL):
        if n < DUE:
            user = due_users[n]
            name, expires = f"bench-due-{n:05d}", now + timedelta(hours=1)
        else:
            name = f"bench-idle-{n // 100:04d}"  # filler: 100 per partition
            expires = now + timedelta(days=1 + n % 6, minutes=n % 1440)
            user = SimpleNamespace(id=str(uuid.uuid4()), user_principal_name=f"idle{n}@bench.example.com")
        leases.append(_lease(name, user, tenant_id, app_id, ref, expires))
    started = time.perf_counter()
    await seed_leases(leases)
    return time.perf_counter() - started


def _sweep(fake: Any, handle: Any) -> list[Table]:
    from core import clock
    from core.secret_store import secret_store
    from leases import revoking, sweeper

    tenant, app, secret, people = _tenant(fake, DUE)
    ref = "dynsecret-bench-seed-client-secret"
    handle.run(secret_store().set(ref, secret))
    seed_s = handle.run(_seed(tenant.id, app.app_id, ref, people), timeout=600)
    clock.advance(timedelta(hours=1, minutes=1))
    tables.stats.reset()
    started = time.perf_counter()
    found = handle.run(revoking.due_entries(clock.now(), TOTAL))
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


def _lease(name: str, user: Any, tenant_id: str, app_id: str, ref: str, expires: datetime) -> Lease:
    from core import clock
    from leases.models import LeaseStatus
    from leases.records import Lease, index_key, new_lease_id

    now = clock.now()
    lease_id = new_lease_id(name)
    return Lease(
        id=lease_id,
        dynamic_secret_name=name,
        dynamic_secret_id=name,
        tenant_id=tenant_id,
        application_id=app_id,
        credential_ref=ref,
        user_id=user.id,
        user_principal_name=user.user_principal_name,
        status=LeaseStatus.ACTIVE,
        created_at=now,
        expires_at=expires,
        max_expires_at=now + timedelta(days=7),
        due_key=index_key("due", expires, lease_id),
        created_by="bench",
    )


@contextlib.contextmanager
def _revocation_times() -> Iterator[dict[str, float]]:
    """Monotonic time of each `lease.revoked` event while open, by lease id. Not the leases'
    `revokedAt`: this VM's wall clock drifts and steps against its monotonic one (up to 10 s
    in a 56 s sweep was seen), which made the rates move with the clock, not with the sweep."""
    from core import events

    times: dict[str, float] = {}

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            line = record.getMessage()
            if line.startswith(events.PREFIX) and '"event":"lease.revoked"' in line:
                times[json.loads(line[len(events.PREFIX) :])["leaseId"]] = time.monotonic()

    handler = Handler()
    level, propagate = events.log.level, events.log.propagate
    events.log.addHandler(handler)
    events.log.setLevel(logging.INFO)
    events.log.propagate = False  # a thousand INFO lines would bury the tables
    try:
        yield times
    finally:
        events.log.removeHandler(handler)
        events.log.setLevel(level)
        events.log.propagate = propagate


def _sweep_tenants(fake: Any, handle: Any, limits: list[float | None]) -> SimpleNamespace:
    """One sweep of PER_TENANT due leases in each of len(limits) tenants, each tenant's Graph
    limited to its requests/s (None: no limit). What it measures, per tenant."""
    from bench.lease_seed import seed_leases
    from core import clock
    from core.secret_store import secret_store
    from leases import sweeper

    setups = [_tenant(fake, PER_TENANT) for _ in limits]
    expires = clock.now() + timedelta(hours=1)
    leases: list[Lease] = []
    for tenant, app, secret, people in setups:
        ref = f"dynsecret-bench-{tenant.id[:8]}-client-secret"
        handle.run(secret_store().set(ref, secret))
        for n, user in enumerate(people):
            leases.append(_lease(f"bench-{tenant.id[:8]}-{n:03d}", user, tenant.id, app.app_id, ref, expires))
    handle.run(seed_leases(leases), timeout=600)
    clock.advance(timedelta(hours=1, minutes=1))
    for (tenant, *_), limit in zip(setups, limits, strict=True):
        if limit is not None:
            fake.set_graph_rate_limit(limit, burst=max(1.0, limit), tenant=tenant)
    fake.reset_counters()
    with _revocation_times() as revoked_when:
        started = time.monotonic()
        summary = handle.run(sweeper.sweep_expired_leases(), timeout=900)
        sweep_s = time.monotonic() - started
    throttled = sum(1 for r in fake.request_log("graph") if r.status == 429)
    for tenant, *_ in setups:
        fake.set_graph_rate_limit(None, tenant=tenant)
    clock.reset()
    revoked_at = [  # a lease's `lease.revoked` event is emitted once its row says `revoked`
        [
            revoked_when[lease.id] - started
            for lease in leases[t * PER_TENANT : (t + 1) * PER_TENANT]
            if lease.id in revoked_when
        ]
        for t in range(len(limits))
    ]
    return SimpleNamespace(revoked_at=revoked_at, summary=summary, sweep_s=sweep_s, throttled=throttled)


def _rate(revoked_at: list[list[float]]) -> tuple[int, float, float]:
    """(revoked, seconds until the last one, revocations per second) over the given tenants."""
    times = [t for tenant in revoked_at for t in tenant]
    last = max(max(times, default=float("nan")), 1.0)
    return len(times), last, len(times) / last


def _tenants_sweep(fake: Any, handle: Any) -> list[Table]:
    """The per-tenant sweep unthrottled (this machine's ceiling), at the issue's limits, and at
    limits this machine can serve (where pacing decides the rate)."""
    others = TENANTS - 1
    ceiling = _sweep_tenants(fake, handle, [None] * others)
    _, _, ceiling_rate = _rate(ceiling.revoked_at)
    rows_out: list[list[str]] = [
        [
            f"the {others} tenants without any Graph limit",
            f"{ceiling_rate:.1f} per second",
            "what this machine's broker + Azurite + stand-in can do at all",
        ]
    ]
    for limit in (TENANT_LIMIT, LIMIT_HERE):
        run = _sweep_tenants(fake, handle, [HARD_LIMIT] + [limit] * others)
        revoked, last, rate = _rate(run.revoked_at[1:])
        goal = 0.9 * limit * others
        reach = "" if goal < ceiling_rate else f"; out of reach here (ceiling {ceiling_rate:.0f}/s)"
        rows_out += [
            [
                f"the {others} tenants at {limit:g} req/s each",
                f"{revoked} / {others * PER_TENANT} revoked",
                f"last at {last:.0f} s (goal: within {SWEEP_INTERVAL_S:.0f} s): "
                + ("met" if revoked == others * PER_TENANT and last <= SWEEP_INTERVAL_S else "NOT met"),
            ],
            [
                "  aggregate revocation rate",
                f"{rate:.1f} per second",
                f"goal >= {goal:.1f} (90% of {others} x {limit:g}): "
                + ("met" if rate >= goal else "NOT met")
                + reach,
            ],
            [
                f"  the tenant throttled to {HARD_LIMIT:g} req/s",
                f"{len(run.revoked_at[0])} / {PER_TENANT} revoked",
                f"{run.summary.get('deferred', 0)} deferred to the next sweep, "
                f"{run.summary.get('failed', 0)} failed",
            ],
            [
                "  whole sweep",
                f"{run.sweep_s:.1f} s",
                f"{run.throttled} Graph answers of 429; {run.summary}",
            ],
        ]
    title = (
        f"Sweep across tenants: {TENANTS} x {PER_TENANT} due leases, per-tenant Graph limits, one throttled"
    )
    return [(title, ["measure", "value", "detail"], rows_out)]


def run() -> list[Table]:
    from tests.azure_fake import start_fake_azure
    from tests.azurite import free_port, start_azurite
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
            chosen = os.environ.get("BENCH_LEASES", "api,sweep,tenants").split(",")
            parts = {"api": lambda: _through_api(fake, handle.url), "sweep": lambda: _sweep(fake, handle)}
            parts["tenants"] = lambda: _tenants_sweep(fake, handle)
            return [table for name in chosen for table in parts[name]()]
        finally:
            if handle is not None:
                handle.stop()  # closes every cached client of its loop
            fake.stop()
            azurite.stop()


if __name__ == "__main__":
    from bench.table import render

    for title, headers, rows in run():
        print(render(title, headers, rows), flush=True)
