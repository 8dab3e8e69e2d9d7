"""A seeded, Jepsen-style concurrency harness (issue 11 item 3): schedules, a runner and invariants.

A seed gives a `Schedule`: operations on the public API (connections with rotation on, rotate now,
dynamic secrets and leases), timer jobs run as the Functions host runs them (`function_app.JOBS`
through `core.jobs.run_job`, on the broker's own event loop), crashes (a job run as a task and
cancelled after a random number of 2 ms ticks) and injected faults (429, 503, 500, timeout, delay,
lost answers), each at an offset from the start. They run concurrently against the stand-in and
Azurite. Then faults are cleared, the clock moves past every claim, the timers run to quiescence,
and the invariants are checked from the API and the stand-in's state:

- I1: every live connection's stored secret gets a token (rotate-now succeeds: its first step signs
  in with the stored secret, its last stores a secret it proved);
- I2: after a reconcile, no app holds a broker-marked secret that no live connection tracks;
- I3: every active lease's password signs in (ROPC at the stand-in), no other lease's does;
- I4: no 500 was answered, and a refused request (409/412/422) changed nothing: its resource's API
  view and Azure state are compared before and after (checked when nothing else touched it meanwhile).

A schedule replays exactly (same operations, targets, offsets and faults); the interleaving inside the
server is real concurrency, so a replay reproduces the pressure, not every instruction's order.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from tests.harness import ServerHandle
from tests.rotation_helpers import BROKER_MARK, PREFIX, RotatingApp, create_body, make_app, rotation_block
from tests.test_leases_support import EntraSetup, entra_setup

DS_PATH = "/api/v1/dynamic-secrets"
REFUSED = (409, 412, 422)
FAULT_TARGETS = (
    ("graph", None),
    ("graph", "addPassword"),
    ("graph", "removePassword"),
    ("graph", "/users/"),
    ("token", None),
    ("keyvault", None),
)
FAULT_KINDS = ("429", "503", "500", "timeout", "delay", "lost")
OPS = {  # name -> weight
    "conn_create": 1,
    "conn_rename": 2,
    "conn_new_secret": 2,
    "conn_invalid": 1,
    "conn_delete": 1,
    "rotate_now": 3,
    "lease_create": 3,
    "lease_renew": 2,
    "lease_revoke": 2,
    "ds_delete": 1,
    "timer": 3,
    "crash": 2,
    "fault": 3,
}
JOB_NAMES = ("rotation", "lease_expiry", "reconcile")
PAST_EVERY_CLAIM = timedelta(minutes=6)  # > STUCK_AFTER, DELETE_CLAIM + longest call, lease claim, intent age


@dataclass(frozen=True)
class Op:
    at: float  # seconds after the start
    name: str
    target: int = 0  # slot of the connection, dynamic secret or lease
    arg: Any = None

    def __str__(self) -> str:
        extra = f" {self.arg}" if self.arg is not None else ""
        return f"+{self.at:.2f}s {self.name}[{self.target}]{extra}"


@dataclass
class Schedule:
    seed: int
    ops: list[Op]
    connections: int
    users: int
    lease_ttl: str
    final_advance: timedelta

    @classmethod
    def generate(cls, seed: int) -> Schedule:
        rng = random.Random(seed)
        names, weights = zip(*OPS.items(), strict=True)
        ops: list[Op] = []
        for _ in range(rng.randint(6, 12)):
            name = rng.choices(names, weights)[0]
            arg: Any = None
            if name in ("timer", "crash"):
                arg = (
                    rng.choice(JOB_NAMES) if name == "timer" else (rng.choice(JOB_NAMES), rng.randint(0, 250))
                )
            elif name == "fault":
                service, pattern = rng.choice(FAULT_TARGETS)
                arg = (
                    service,
                    rng.choice(FAULT_KINDS),
                    pattern,
                    rng.randint(1, 3),
                    round(rng.uniform(0.2, 1.5), 2),
                )
            elif name in ("conn_rename", "conn_delete"):
                arg = rng.random() < 0.3  # with a stale If-Match (a 412 that must change nothing)
            elif name == "lease_renew":
                arg = rng.choice(("30m", "2h"))
            ops.append(Op(round(rng.uniform(0, 1.5), 2), name, rng.randint(0, 2), arg))
        ops.sort(key=lambda op: op.at)
        advance = PAST_EVERY_CLAIM if rng.random() < 0.6 else timedelta(hours=2, minutes=10)
        return cls(seed, ops, rng.randint(1, 2), rng.randint(2, 3), rng.choice(("1h", "90m")), advance)

    def describe(self) -> str:
        head = (
            f"seed {self.seed}: {self.connections} connection(s), {self.users} dynamic secret(s), "
            f"lease ttl {self.lease_ttl}, final clock advance {self.final_advance}"
        )
        return "\n".join([head, *(f"  {op}" for op in self.ops)])


@dataclass
class Outcome:
    """What one schedule did and which invariants it broke."""

    violations: list[str] = field(default_factory=list)
    statuses: list[tuple[str, int]] = field(default_factory=list)
    refusals_checked: int = 0
    refusals_skipped: int = 0
    trace: list[str] = field(default_factory=list)  # every API request: when, what, answer, how long
    phases: dict[str, float] = field(default_factory=dict)  # seconds since the start, at each phase's end


@dataclass
class Span:
    """An operation's resource and time interval (to tell whether a refusal ran alone)."""

    resource: str
    start: float
    end: float = float("inf")


class World:
    """One schedule's tenants, apps, connections, dynamic secrets and leases."""

    def __init__(
        self, fake: Any, broker: ServerHandle, client: httpx.AsyncClient, schedule: Schedule
    ) -> None:
        self.fake, self.broker, self.client, self.schedule = fake, broker, client, schedule
        self.outcome = Outcome()
        self.apps: list[RotatingApp] = []
        self.conns: list[str | None] = []  # slot -> connection id (None: create not answered yet)
        self.conn_app: dict[str, RotatingApp] = {}
        self.ds_names: list[str] = []
        self.leases: list[tuple[str, str, str]] = []  # (lease id, upn, password)
        self.spans: list[Span] = []
        self.entra: EntraSetup
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ plumbing

    async def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        response = await self.client.request(method, url, **kwargs)
        self.outcome.trace.append(
            f"  {started - self.t0:6.2f}s {method} {url} -> {response.status_code} "
            f"({time.monotonic() - started:.2f}s)" + _detail(response)
        )
        self.outcome.statuses.append((f"{method} {url}", response.status_code))
        if response.status_code >= 500 and response.status_code not in (502, 503, 504):
            self.outcome.violations.append(
                f"I4: {method} {url} answered {response.status_code}: {response.text[:300]}"
            )
        return response

    async def on_broker(self, coro: Awaitable[Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.broker.loop))  # type: ignore[arg-type]

    def conn(self, slot: int) -> str | None:
        live = [c for c in self.conns if c]
        return live[slot % len(live)] if live else None

    # ------------------------------------------------------------------ set-up

    async def setup(self) -> None:
        for _ in range(self.schedule.connections):
            await self.create_connection()
        self.entra = entra_setup(self.fake, users=self.schedule.users)
        body = self.entra.body(defaultTtl=self.schedule.lease_ttl, maxTtl="4h")
        response = await self.call("POST", DS_PATH, json=body)
        assert response.status_code == 201, response.text
        self.ds_names = [item["name"] for item in response.json()["items"]]
        await self.op_lease_create(Op(0, "lease_create"))  # so renew and revoke have a target from the start

    async def create_connection(self) -> None:
        app = make_app(self.fake)
        self.apps.append(app)
        self.conns.append(None)
        slot = len(self.conns) - 1
        response = await self.call("POST", PREFIX, json=create_body(app, rotation_block(app)))
        if response.status_code == 201:
            self.conns[slot] = response.json()["id"]
            self.conn_app[response.json()["id"]] = app

    # ------------------------------------------------------------------ operations

    async def run_op(self, op: Op) -> None:
        await asyncio.sleep(op.at)
        handler: Callable[[Op], Awaitable[None]] = getattr(self, f"op_{op.name}")
        await handler(op)

    async def op_conn_create(self, op: Op) -> None:
        await self.create_connection()

    async def op_conn_rename(self, op: Op) -> None:
        conn = self.conn(op.target)
        if conn:
            await self.refusable(
                f"conn:{conn}",
                "PATCH",
                f"{PREFIX}/{conn}",
                op.arg,
                json={"name": f"n-{uuid.uuid4().hex[:8]}"},
            )

    async def op_conn_invalid(self, op: Op) -> None:
        conn = self.conn(op.target)
        if conn:
            body = {"rotation": {"enabled": True, "timeZone": "Europe"}}
            await self.refusable(f"conn:{conn}", "PATCH", f"{PREFIX}/{conn}", False, json=body)

    async def op_conn_new_secret(self, op: Op) -> None:
        conn = self.conn(op.target)
        if conn:
            key_id, secret = self.fake.add_password(self.conn_app[conn].app, display_name="replaced by hand")
            body = {
                "credentials": {"clientSecret": secret},
                "rotation": {"enabled": True, "clientSecretKeyId": key_id},
            }
            await self.refusable(f"conn:{conn}", "PATCH", f"{PREFIX}/{conn}", False, json=body)

    async def op_conn_delete(self, op: Op) -> None:
        conn = self.conn(op.target)
        if conn:
            response = await self.refusable(f"conn:{conn}", "DELETE", f"{PREFIX}/{conn}", op.arg)
            if response is not None and response.status_code in (204, 404):
                self.conns = [None if c == conn else c for c in self.conns]

    async def op_rotate_now(self, op: Op) -> None:
        conn = self.conn(op.target)
        if conn:
            await self.refusable(f"conn:{conn}", "POST", f"{PREFIX}/{conn}/rotate", False)

    async def op_lease_create(self, op: Op) -> None:
        if self.ds_names:
            name = self.ds_names[op.target % len(self.ds_names)]
            response = await self.refusable(f"ds:{name}", "POST", f"{DS_PATH}/{name}/leases", False, json={})
            if response is not None and response.status_code == 201:
                body = response.json()
                creds = body["credentials"]
                self.leases.append((body["lease"]["id"], creds["userPrincipalName"], creds["password"]))

    async def op_lease_renew(self, op: Op) -> None:
        if self.leases:
            lease_id = self.leases[op.target % len(self.leases)][0]
            await self.refusable(
                f"lease:{lease_id}", "POST", f"/api/v1/leases/{lease_id}/renew", False, json={"ttl": op.arg}
            )

    async def op_lease_revoke(self, op: Op) -> None:
        if self.leases:
            lease_id = self.leases[op.target % len(self.leases)][0]
            await self.refusable(f"lease:{lease_id}", "DELETE", f"/api/v1/leases/{lease_id}", False)

    async def op_ds_delete(self, op: Op) -> None:
        if self.ds_names:
            name = self.ds_names[op.target % len(self.ds_names)]
            await self.refusable(f"ds:{name}", "DELETE", f"{DS_PATH}/{name}", False)

    async def op_timer(self, op: Op) -> None:
        span = self.span("*")
        try:
            await self.on_broker(run_job_named(op.arg))
        except Exception as error:  # failed under injected faults: the invariants judge the outcome
            self.outcome.trace.append(f"  {span.start - self.t0:6.2f}s job {op.arg} failed: {error!r}")
        span.end = time.monotonic()

    async def op_crash(self, op: Op) -> None:
        job, ticks = op.arg
        span = self.span("*")
        await self.on_broker(crash_job(job, ticks))
        span.end = time.monotonic()

    async def op_fault(self, op: Op) -> None:
        service, kind, pattern, count, seconds = op.arg
        self.fake.inject(service, kind, count=count, path_pattern=pattern, retry_after=1, seconds=seconds)

    # ------------------------------------------------------------------ refusals change nothing (I4)

    def span(self, resource: str) -> Span:
        span = Span(resource, time.monotonic())
        self.spans.append(span)
        return span

    async def refusable(
        self, resource: str, method: str, url: str, stale: bool, **kwargs: Any
    ) -> httpx.Response | None:
        """Send a request; if it is refused, its resource must look as it did before."""
        headers: dict[str, str] = {}
        if stale:
            headers["If-Match"] = "W/\"datetime'2000-01-01T00%3A00%3A00.0000000Z'\""
        span = self.span(resource)
        before = await self.snapshot(resource)
        response = await self.call(method, url, headers=headers, **kwargs)
        after = await self.snapshot(resource) if response.status_code in REFUSED else None
        span.end = time.monotonic()
        if response.status_code in REFUSED:
            if self.alone(span):
                self.outcome.refusals_checked += 1
                if before != after:
                    self.outcome.violations.append(
                        f"I4: {method} {url} was refused ({response.status_code}) but changed {resource}:\n"
                        f"    before {before}\n    after  {after}"
                    )
            else:
                self.outcome.refusals_skipped += 1
        return response

    def alone(self, span: Span) -> bool:
        """No other operation on the same resource (or a timer) overlapped this one."""
        return not any(
            other is not span
            and _related(other.resource, span.resource)
            and other.start < span.end
            and other.end > span.start
            for other in self.spans
        )

    async def snapshot(self, resource: str) -> Any:
        kind, _, key = resource.partition(":")
        if kind == "conn":
            response = await self.client.get(f"{PREFIX}/{key}")
            view = response.json() if response.status_code == 200 else response.status_code
            with self.fake.state.lock:
                keys = sorted(c.key_id for c in self.conn_app[key].app.password_credentials)
            return (view, keys)
        if kind == "ds":
            ds = await self.client.get(f"{DS_PATH}/{key}")
            leases = await self.client.get(f"{DS_PATH}/{key}/leases")
            items = leases.json()["items"] if leases.status_code == 200 else leases.status_code
            view = ds.json() if ds.status_code == 200 else ds.status_code
            return (view, items, self.user_password(view))
        lease = await self.client.get(f"/api/v1/leases/{key}")
        view = lease.json() if lease.status_code == 200 else lease.status_code
        return (view, self.user_password(view))

    def user_password(self, view: Any) -> str | None:
        """The password of the resource's own user (other users' leases may change theirs meanwhile)."""
        if not isinstance(view, dict):
            return None
        with self.fake.state.lock:
            user = self.fake.state.users.get(view["userId"])
            return None if user is None else str(user.password)

    # ------------------------------------------------------------------ quiescence and invariants

    async def quiesce(self) -> None:
        from core import clock

        self.fake.reset_faults()
        await self.on_broker(_advance(clock, self.schedule.final_advance))
        for job in ("reconcile", "rotation", "lease_expiry", "reconcile"):
            try:
                await self.on_broker(run_job_named(job))
            except Exception as error:
                self.outcome.violations.append(f"quiescence: job {job} failed with faults cleared: {error!r}")

    async def check(self) -> None:
        await self.probe_refusals()
        await self.check_connections()
        await self.check_leases()

    async def probe_refusals(self) -> None:
        """Refusals sent while nothing else runs (so I4 is always checked): each must be refused."""
        probes: list[tuple[str, str, str, bool, dict[str, Any]]] = []
        for conn in {c for c in self.conns if c}:
            url = f"{PREFIX}/{conn}"
            probes += [
                (f"conn:{conn}", "DELETE", url, True, {}),
                (f"conn:{conn}", "PATCH", url, True, {"json": {"name": f"n-{uuid.uuid4().hex[:8]}"}}),
                (
                    f"conn:{conn}",
                    "PATCH",
                    url,
                    False,
                    {"json": {"rotation": {"enabled": True, "timeZone": "Europe"}}},
                ),
            ]
        for name in self.ds_names[:1]:
            probes.append(
                (f"ds:{name}", "POST", f"{DS_PATH}/{name}/leases", False, {"json": {"ttl": "banana"}})
            )
        for resource, method, url, stale, kwargs in probes:
            response = await self.refusable(resource, method, url, stale, **kwargs)
            if response is not None and response.status_code not in (*REFUSED, 404):
                self.outcome.violations.append(
                    f"I4: probe {method} {url} ({'stale If-Match' if stale else 'bad body'}) not refused: "
                    f"{response.status_code} {response.text[:200]}"
                )

    async def check_connections(self) -> None:
        listed = await self.call("GET", PREFIX)
        by_client: dict[str, list[dict[str, Any]]] = {}
        for item in listed.json()["items"]:
            by_client.setdefault(item["clientId"], []).append(item)
        # I1 as a fresh worker sees it: no cached credential or token may stand in for the stored secret.
        await self.on_broker(_fresh_worker())
        for app in self.apps:
            live = by_client.get(app.app.app_id, [])
            for item in live:  # I1
                response = await self.call("POST", f"{PREFIX}/{item['id']}/rotate")
                if response.status_code != 200:
                    self.outcome.violations.append(
                        f"I1: connection {item['id']}: rotate-now after quiescence answered "
                        f"{response.status_code}: {response.text[:300]}"
                    )
            tracked: set[str] = set()
            for item in live:
                rotation = (await self.call("GET", f"{PREFIX}/{item['id']}")).json().get("rotation") or {}
                tracked.add((rotation.get("clientSecretKeyId") or "").lower())
                tracked.update(k.lower() for k in rotation.get("pendingRemovalKeyIds") or [])
            with self.fake.state.lock:
                marked = {
                    (c.key_id.lower(), c.display_name)
                    for c in app.app.password_credentials
                    if BROKER_MARK in (c.display_name or "")
                }
            untracked = sorted(name for key, name in marked if key not in tracked)
            if untracked:  # I2
                self.outcome.violations.append(
                    f"I2: app {app.app.app_id} ({len(live)} live connection(s)) holds untracked "
                    f"broker-marked secrets {untracked}"
                )

    async def check_leases(self) -> None:
        from core import clock

        now = clock.now()
        for lease_id, upn, password in self.leases:
            response = await self.call("GET", f"/api/v1/leases/{lease_id}")
            status = (
                response.json()["status"] if response.status_code == 200 else f"http {response.status_code}"
            )
            active = status == "active"
            if active and _parse(response.json()["expiresAt"]) <= now:
                self.outcome.violations.append(f"I3: lease {lease_id} is active past its expiry")
            if self.entra.signs_in(upn, password) != active:  # I3
                self.outcome.violations.append(
                    f"I3: lease {lease_id} ({status}): password {'does not sign' if active else 'signs'} in"
                )

    async def cleanup(self) -> None:
        """Leave nothing for later tests' timers: delete this schedule's connections and dynamic secrets."""
        for conn in {c for c in self.conns if c}:
            await self.client.delete(f"{PREFIX}/{conn}")
        for name in self.ds_names:
            await self.client.delete(f"{DS_PATH}/{name}")


def _parse(value: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _fresh_worker() -> None:
    """What a worker restart does to the broker's per-loop clients and credential caches."""
    from core.loop_cache import close_all

    await close_all()


def _related(one: str, other: str) -> bool:
    """Operations on these resources can change each other's snapshot: the same one, a timer (`*`),
    or a dynamic secret and one of its leases (a lease id starts with `{name}.`; seed 5067)."""
    if one == other or "*" in (one, other):
        return True
    ds, lease = sorted((one, other))  # "ds:..." sorts before "lease:..."
    return ds.startswith("ds:") and lease.startswith(f"lease:{ds[3:]}.")


def _detail(response: httpx.Response) -> str:
    """A refusal's problem detail for the trace (problem bodies never hold a secret)."""
    if response.status_code < 400 or "json" not in response.headers.get("content-type", ""):
        return ""
    try:
        return f" {str(response.json().get('detail', ''))[:200]}"
    except ValueError:
        return ""


async def _advance(clock: Any, delta: timedelta) -> None:
    clock.advance(delta)


async def run_job_named(name: str) -> dict[str, Any]:
    """Run a timer job as the Functions host does (function_app's Job definition, core.jobs.run_job)."""
    import function_app
    from core.jobs import run_job

    job = next(j for j in function_app.JOBS if j.name == name)
    return await run_job(job)


async def crash_job(name: str, ticks: int) -> None:
    """A worker dying mid-run: the job runs as a task, cancelled after `ticks` ticks of 2 ms."""
    task = asyncio.ensure_future(run_job_named(name))
    for _ in range(ticks):
        if task.done():
            break
        await asyncio.sleep(0.002)
    task.cancel()
    await asyncio.wait([task])  # cancelled (the crash) or finished before it: either way the run is over
    if not task.cancelled():
        task.exception()  # a failure before the crash is part of the run, not the harness's


async def run_schedule(fake: Any, broker: ServerHandle, token: str, schedule: Schedule) -> Outcome:
    """Set up, run the schedule's operations concurrently, quiesce, check, clean up."""
    async with httpx.AsyncClient(
        base_url=broker.url, headers={"Authorization": f"Bearer {token}"}, timeout=90
    ) as client:
        world = World(fake, broker, client, schedule)
        started = time.monotonic()
        await world.setup()
        world.outcome.phases["setup"] = time.monotonic() - started
        try:
            await asyncio.wait_for(asyncio.gather(*(world.run_op(op) for op in schedule.ops)), timeout=150)
        except TimeoutError:
            world.outcome.violations.append("the schedule did not finish within 150 s (a hang)")
        world.outcome.phases["run"] = time.monotonic() - started
        await world.quiesce()
        world.outcome.phases["quiesce"] = time.monotonic() - started
        await world.check()
        world.outcome.phases["check"] = time.monotonic() - started
        await world.cleanup()
        world.outcome.phases["cleanup"] = time.monotonic() - started
        return world.outcome
