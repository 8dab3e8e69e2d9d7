"""The Azure gateway against the stand-in, through the real SDKs: retries, deadlines, pacing, lost answers.

Each test runs its calls on the broker's own loop (`broker.run`), as the routes and timers do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from core import azure_credentials, azure_gateway, azure_passwords, pacing
from core.azure_failure import DEADLINE, AzureFailure
from tests.harness import ServerHandle

T = TypeVar("T")


@dataclass
class App:
    tenant: Any
    app: Any
    secret: str
    user: Any


def make_app(
    fake: Any, permissions: tuple[str, ...] = ("User.ReadWrite.All", "Application.ReadWrite.All")
) -> App:
    tenant = fake.add_tenant(domain=f"{uuid.uuid4().hex[:10]}.example.com")
    app = fake.add_application(tenant, "gateway-test", permissions=list(permissions), owned_by_itself=True)
    _, secret = fake.add_password(app, display_name="broker")
    user = fake.add_user(tenant, f"someone@{tenant.default_domain}", "Init-Passw0rd-123!")
    return App(tenant, app, secret, user)


async def read_user(target: App, step: str = "readUser") -> float:
    """Read the app's user through the gateway; returns the seconds it took."""
    access = await azure_credentials.for_secret(target.tenant.id, target.app.app_id, target.secret)
    started = time.monotonic()
    users = access.graph().users
    await azure_gateway.call(step, lambda: users.by_user_id(target.user.id).get(), pace=access.pace_key)
    return time.monotonic() - started


def run(broker: ServerHandle, make: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await make()

    return broker.run(wrapper())


@pytest.fixture
def target(fake_azure: Any) -> App:
    return make_app(fake_azure)


def test_429_retry_after_is_honoured(broker: ServerHandle, fake_azure: Any, target: App) -> None:
    run(broker, lambda: read_user(target))  # a token first, so only the Graph call is timed
    fake_azure.inject("graph", "429", count=1, retry_after=2, path_pattern=target.user.id)
    seconds = run(broker, lambda: read_user(target))
    assert seconds >= 2.0
    assert fake_azure.request_count("graph", target.user.id) == 3  # first read, the 429, the retry
    assert pacing.rate((target.tenant.id, target.app.app_id)) is None  # one 429 among few calls: no pace


def test_5xx_is_retried_only_when_the_request_is_idempotent(
    broker: ServerHandle, fake_azure: Any, target: App
) -> None:
    fake_azure.inject("graph", "503", count=1, retry_after=0, path_pattern=target.user.id)
    fake_azure.inject("graph", "500", count=1, path_pattern=target.user.id)
    run(broker, lambda: read_user(target))  # GET: both retried
    assert fake_azure.request_count("graph", target.user.id) == 3

    fake_azure.inject("graph", "500", count=1, path_pattern="addPassword")

    async def add() -> Any:
        access = await azure_credentials.for_secret(target.tenant.id, target.app.app_id, target.secret)
        end = datetime.now(UTC) + timedelta(days=1)
        return await azure_passwords.add_password(access, target.app.id, "broker run-500", end)

    with pytest.raises(AzureFailure) as caught:  # a 500 may have done the work: read, never re-POST
        run(broker, add)
    assert fake_azure.request_count("graph", f"{target.app.id}/addPassword", "POST") == 1
    assert caught.value.code == "outcome-unknown"
    assert not [c for c in target.app.password_credentials if c.display_name == "broker run-500"]


def test_deadline_stops_retries_and_waits(broker: ServerHandle, fake_azure: Any, target: App) -> None:
    run(broker, lambda: read_user(target))
    fake_azure.inject("graph", "429", count=3, retry_after=30, path_pattern=target.user.id)

    async def under_deadline() -> float:
        async with azure_gateway.deadline(2.0):
            return await read_user(target)

    started = time.monotonic()
    with pytest.raises(AzureFailure) as caught:
        run(broker, under_deadline)
    assert time.monotonic() - started < 2.0  # a 30 s wait past the deadline is not even begun
    assert caught.value.status == 429
    assert fake_azure.request_count("graph", target.user.id) == 2

    target = make_app(fake_azure)  # the first app's key stays paused for its 30 s Retry-After
    run(broker, lambda: read_user(target))
    fake_azure.inject("graph", "delay", count=1, seconds=3, path_pattern=target.user.id)
    started = time.monotonic()
    with pytest.raises(AzureFailure) as caught:
        run(broker, lambda: under_deadline())
    assert caught.value.code == DEADLINE
    assert 1.5 < time.monotonic() - started < 2.8  # cut at the deadline, not at the 3 s answer


def test_takeover_waits_for_the_longest_call() -> None:
    claim_until = datetime(2030, 1, 1, tzinfo=UTC)
    assert azure_gateway.takeover_at(claim_until) - claim_until == timedelta(
        seconds=azure_gateway.MAX_CALL_SECONDS
    )


def test_a_429_paces_only_its_own_tenant_and_app(broker: ServerHandle, fake_azure: Any) -> None:
    throttled, other = make_app(fake_azure), make_app(fake_azure)
    run(broker, lambda: read_user(throttled))
    run(broker, lambda: read_user(other))
    fake_azure.inject("graph", "429", count=1, retry_after=3, path_pattern=throttled.user.id)

    async def both() -> tuple[float, float, float]:
        first = asyncio.create_task(read_user(throttled))
        await asyncio.sleep(0.5)  # the 429 has paused `throttled`'s key
        second = asyncio.create_task(read_user(throttled, "readUserAgain"))
        elsewhere = await read_user(other)
        return await first, await second, elsewhere

    first, second, elsewhere = run(broker, both)
    assert first >= 3.0
    assert second >= 2.0  # the same key waits out the Retry-After, even a new call
    assert elsewhere < 1.0  # another tenant's calls go at once


def test_a_busy_key_learns_a_pace_so_no_call_fails(
    broker: ServerHandle, fake_azure: Any, target: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 callers at once against a limit of 10 calls/s. Waiting out each Retry-After alone sends
    every waiting call again together after each pause: half meet another 429, and a call that
    meets four in a row fails. With a learned pace the calls after the first 429s are spaced."""
    key = (target.tenant.id, target.app.app_id)
    run(broker, lambda: read_user(target))  # a token first: only Graph is limited
    fake_azure.set_graph_rate_limit(10, burst=10, tenant=target.tenant)
    started = time.time()

    async def callers() -> None:
        async def caller() -> None:
            for _ in range(4):
                await read_user(target)  # raises AzureFailure if a call fails for good

        await asyncio.gather(*(caller() for _ in range(16)))

    try:
        run(broker, callers)
    finally:
        fake_azure.set_graph_rate_limit(None, tenant=target.tenant)
    throttled = [r for r in fake_azure.request_log("graph") if r.status == 429 and r.at >= started]
    assert len(throttled) <= 16  # the first burst's 6 (10 of the 16 in flight pass), then few
    learned = pacing.rate(key)
    assert learned is not None
    assert 7.0 <= learned <= 12.0  # near the limit, not far under it

    monkeypatch.setattr(pacing, "FORGET_AFTER", 0.5)
    time.sleep(0.6)
    run(broker, lambda: read_user(target))
    assert pacing.rate(key) is None  # quiet for FORGET_AFTER: unpaced again


def test_lost_add_password_is_adopted_once(broker: ServerHandle, fake_azure: Any, target: App) -> None:
    fake_azure.inject("graph", "lost", count=1, path_pattern="addPassword")
    name = azure_passwords.marker("broker-rotation", uuid.uuid4().hex)

    async def add() -> azure_passwords.AddedPassword:
        access = await azure_credentials.for_secret(target.tenant.id, target.app.app_id, target.secret)
        return await azure_passwords.add_password(
            access, target.app.id, name, datetime.now(UTC) + timedelta(days=1)
        )

    added = run(broker, add)
    marked = [c for c in target.app.password_credentials if c.display_name == name]
    assert len(marked) == 1  # Graph made it once; the broker never sent a second POST
    assert fake_azure.request_count("graph", f"{target.app.id}/addPassword", "POST") == 1
    assert added.adopted
    assert added.secret is None
    assert added.key_id == str(marked[0].key_id).lower()


def test_answers_are_classified_with_step_and_azure_code(
    broker: ServerHandle, fake_azure: Any, target: App
) -> None:
    wrong = App(target.tenant, target.app, "not-the-secret", target.user)
    with pytest.raises(AzureFailure) as caught:
        run(broker, lambda: read_user(wrong))
    assert (caught.value.step, caught.value.code, caught.value.field) == (
        "token",
        "AADSTS7000215",
        "clientSecret",
    )
    problem = caught.value.problem(validating=True)
    assert problem.status == 422
    assert problem.errors[0].field == "clientSecret"

    ghost = App(
        SimpleNamespace(id="00000000-0000-0000-0000-00000000dead"), target.app, target.secret, target.user
    )
    with pytest.raises(AzureFailure) as caught:
        run(broker, lambda: read_user(ghost))
    assert (caught.value.code, caught.value.field) == ("AADSTS90002", "tenantId")

    weak = make_app(fake_azure, permissions=())
    with pytest.raises(AzureFailure) as caught:
        run(broker, lambda: read_user(weak))
    assert (caught.value.step, caught.value.status) == ("readUser", 403)
    assert caught.value.code == "Authorization_RequestDenied"
    assert caught.value.problem().status == 502

    fake_azure.inject("graph", "503", count=5, retry_after=0, path_pattern=target.user.id)
    with pytest.raises(AzureFailure) as caught:
        run(broker, lambda: read_user(target))
    assert (caught.value.status, caught.value.code, caught.value.transient) == (
        503,
        "serviceNotAvailable",
        True,
    )
    assert caught.value.problem().status == 503


def test_the_stand_ins_graph_limit_applies_per_tenant(broker: ServerHandle, fake_azure: Any) -> None:
    limited, free = make_app(fake_azure), make_app(fake_azure)
    run(broker, lambda: read_user(limited))
    run(broker, lambda: read_user(free))
    fake_azure.set_graph_rate_limit(1, burst=1, tenant=limited.tenant)
    started = time.time()

    async def reads() -> tuple[float, float]:
        await read_user(limited)  # uses the one token in the bucket
        slowed = await read_user(limited)  # 429 + Retry-After 1, honoured, then served
        fast = sum([await read_user(free) for _ in range(5)])
        return slowed, fast

    slowed, fast = run(broker, reads)
    assert slowed >= 1.0
    assert fast < 1.0  # another tenant's token bucket is not touched
    throttled = [r for r in fake_azure.request_log("graph") if r.status == 429 and r.at >= started]
    assert throttled
    assert all(limited.user.id in r.path for r in throttled)
