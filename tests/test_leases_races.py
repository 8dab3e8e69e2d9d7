"""The lease defects of issue 11, each replayed deterministically against the stand-in and Azurite.

A race is replayed by pausing the broker at the racing point: a storage function is wrapped so
the request stops there (on the server's loop) until the test lets it go, while the other
request runs. Throttling is replayed with the stand-in's 429 + Retry-After faults.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core import clock, records
from leases import reconciler, revoking, secret_copies, sweeper
from leases import records as lease_rows
from leases.records import DynamicSecret, LeaseClaim
from leases.service import RECONCILE_AFTER
from tests.harness import ServerHandle, assert_problem
from tests.test_leases_support import EntraSetup, create_dynamic_secrets, entra_setup, lease, lease_row

URL = "/api/v1/dynamic-secrets"


class Pause:
    """Stop calls of a wrapped async function at its start until `release()` (one gate per test)."""

    def __init__(self, when: Callable[..., bool] = lambda *a, **k: True) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()
        self.when = when

    def wrap(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def paused(*args: Any, **kwargs: Any) -> Any:
            if self.when(*args, **kwargs):
                self.reached.set()
                await asyncio.to_thread(self.released.wait, 30)
            return await original(*args, **kwargs)

        return paused

    def wait(self) -> None:
        assert self.reached.wait(30), "the request never reached the racing point"

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def setup(fake_azure: Any) -> EntraSetup:
    return entra_setup(fake_azure, users=1)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def one_secret(api: httpx.Client, setup: EntraSetup) -> str:
    return str(create_dynamic_secrets(api, setup, users=[setup.users[0].id])[0]["name"])


def background(pool: ThreadPoolExecutor, call: Callable[[], httpx.Response]) -> Future[httpx.Response]:
    return pool.submit(call)


# ---------------------------------------------------------------------------- delete vs create


def test_deleting_while_a_lease_is_being_created_is_refused_and_the_lease_stays_revocable(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch, pool: Any
) -> None:
    name = one_secret(api, setup)
    user = setup.users[0]
    pause = Pause()  # the create holds the user's claim; its lease row is not written yet
    monkeypatch.setattr(lease_rows, "write_intent", pause.wrap(lease_rows.write_intent))
    creating = background(pool, lambda: api.post(f"{URL}/{name}/leases", json={}))
    pause.wait()
    assert_problem(api.delete(f"{URL}/{name}"), 409)  # was: 204, and the create went on
    pause.release()
    created = creating.result(30)
    assert created.status_code == 201, created.text
    password = created.json()["credentials"]["password"]
    assert api.get(f"{URL}/{name}").status_code == 200  # the password belongs to a live dynamic secret
    assert setup.signs_in(user.user_principal_name, password)

    assert api.delete(f"{URL}/{name}").status_code == 204  # now: revokes the lease, then deletes
    assert not setup.signs_in(user.user_principal_name, password)
    assert lease_row(broker, created.json()["lease"]["id"])["status"] == "revoked"


def test_a_create_that_read_a_dynamic_secret_deleted_before_its_claim_stops(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch, pool: Any
) -> None:
    name = one_secret(api, setup)
    user = setup.users[0]
    pause = Pause(when=lambda record: isinstance(record, LeaseClaim) and not record.deleting)
    monkeypatch.setattr(records, "insert", pause.wrap(records.insert))
    creating = background(pool, lambda: api.post(f"{URL}/{name}/leases", json={}))
    pause.wait()  # the create has read the dynamic secret, not claimed the user yet
    assert api.delete(f"{URL}/{name}").status_code == 204
    pause.release()
    assert_problem(creating.result(30), 404)
    assert setup.password_changes(user.id) == 0  # no password was set for a deleted dynamic secret
    assert broker.run(lease_rows.get_claim(name)) is None  # and nothing is left holding the name


# ---------------------------------------------------------------------------- PATCH vs PATCH


def test_concurrent_secret_patches_leave_only_the_winners_secret_in_the_vault(
    api: httpx.Client,
    setup: EntraSetup,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    pool: Any,
) -> None:
    name = one_secret(api, setup)
    ds_id = api.get(f"{URL}/{name}").json()["id"]
    _, first = fake_azure.add_password(setup.app, display_name="first")
    _, second = fake_azure.add_password(setup.app, display_name="second")
    gates = {first: Pause(), second: Pause()}
    original = records.batch

    async def commit(operations: Any) -> Any:  # the ETag write that switches the row to a new copy
        from core.secret_store import secret_store

        for _, record in operations:
            if isinstance(record, DynamicSecret):
                gate = gates[await secret_store().get(record.credential_ref)]
                gate.reached.set()
                await asyncio.to_thread(gate.released.wait, 30)
        return await original(operations)

    monkeypatch.setattr(records, "batch", commit)
    winner = background(pool, lambda: api.patch(f"{URL}/{name}", json={"clientSecret": first}))
    gates[first].wait()  # the first has written its secret and read the row's ETag
    loser = background(pool, lambda: api.patch(f"{URL}/{name}", json={"clientSecret": second}))
    gates[second].wait()  # the second read the same ETag and wrote its secret after the first
    gates[first].release()
    assert winner.result(30).status_code == 200
    gates[second].release()
    assert_problem(loser.result(30), 409)

    with fake_azure.state.lock:
        live = [
            s.latest.value for n, s in fake_azure.state.secrets.items() if n.startswith(f"dynsecret-{ds_id}-")
        ]
    assert live == [first]  # neither the loser's copy nor the replaced one is left in the vault
    created = lease(api, name)  # and leases sign in with the winner's secret
    assert setup.signs_in(setup.users[0].user_principal_name, created["credentials"]["password"])


# ---------------------------------------------------------------------------- claims and pacing


def test_a_throttled_sweeper_never_outlives_its_claim(
    api: httpx.Client,
    setup: EntraSetup,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two 429s whose Retry-After runs past the claim: the sweeper gives up in time, so a second
    sweeper's takeover and a new lease are never hit by the first one's late reset."""
    name = one_secret(api, setup)
    user = setup.users[0]
    first = lease(api, name, "1m")["lease"]["id"]
    clock.advance(timedelta(minutes=2))
    monkeypatch.setattr(revoking, "CLAIM_FOR", timedelta(seconds=4))
    path = f"/users/{user.id}"
    fake_azure.inject("graph", "429", count=3, path_pattern=path, method="PATCH", retry_after=2)
    started = time.time()
    assert broker.run(sweeper.sweep_expired_leases()).get("failed") == 1
    claim_ends = started + 4
    sent = [r.at for r in fake_azure.request_log("graph") if r.method == "PATCH" and r.path.endswith(path)]
    assert sent
    assert all(at <= claim_ends for at in sent), "a request was sent after the claim ended"
    assert time.time() <= claim_ends + 0.5  # the sweeper itself returned within its claim
    assert lease_row(broker, first)["status"] == "revoke_failed"

    fake_azure.reset_faults()
    clock.advance(timedelta(minutes=2))  # past the backoff and the takeover margin
    assert broker.run(sweeper.sweep_expired_leases()).get("revoked") == 1
    fresh = lease(api, name)
    time.sleep(3)  # when the first sweeper's third try would have landed
    assert setup.signs_in(user.user_principal_name, fresh["credentials"]["password"])


def test_a_429_from_one_tenant_does_not_pause_the_sweep_of_another(
    api: httpx.Client, fake_azure: Any, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    throttled, other = entra_setup(fake_azure, users=1), entra_setup(fake_azure, users=3)
    slow_name = one_secret(api, throttled)
    lease(api, slow_name, "1m")
    names = [item["name"] for item in create_dynamic_secrets(api, other)]
    fast = [lease(api, n, "2m")["lease"]["id"] for n in names]
    clock.advance(timedelta(minutes=3))
    monkeypatch.setattr(sweeper, "CONCURRENCY", 2)
    slow_user = throttled.users[0].id
    fake_azure.inject(
        "graph", "429", count=1, path_pattern=f"/users/{slow_user}", method="PATCH", retry_after=3
    )
    # The other tenant's first reset answers late, so its next ones start after the 429 above.
    first_other = other.users[0].id
    fake_azure.inject(
        "graph", "delay", count=1, path_pattern=f"/users/{first_other}", method="PATCH", seconds=0.5
    )
    started = time.time()
    summary = broker.run(sweeper.sweep_expired_leases())
    assert summary.get("revoked", 0) >= 4
    done = [
        r.at
        for r in fake_azure.request_log("graph")
        if r.at >= started
        and r.method == "PATCH"
        and r.status == 204
        and any(r.path.endswith(u.id) for u in other.users)
    ]
    assert len(done) == 3
    assert max(done) - started < 2.0  # not held back by the other tenant's 3 s Retry-After
    assert time.time() - started >= 3.0  # while the throttled tenant waited it out
    assert all(lease_row(broker, lease_id)["status"] == "revoked" for lease_id in fast)


# ---------------------------------------------------------------------------- a dynamic secret writer dies


def vault_copies(fake_azure: Any) -> set[str]:
    with fake_azure.state.lock:
        return {name for name in fake_azure.state.secrets if name.startswith("dynsecret-")}


def test_a_create_that_dies_after_writing_the_secret_copy_leaves_none_behind(
    api: httpx.Client,
    setup: EntraSetup,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    pool: Any,
) -> None:
    before = vault_copies(fake_azure)
    pause = Pause(when=lambda operations: any(isinstance(r, DynamicSecret) for _, r in operations))
    monkeypatch.setattr(records, "batch", pause.wrap(records.batch))
    creating = background(pool, lambda: api.post(URL, json=setup.body(users=[setup.users[0].id])))
    pause.wait()  # the copy is in the vault, its row is not written: the process dies here
    assert len(vault_copies(fake_azure) - before) == 1
    assert broker.run(reconciler.reconcile_leases()).get("secrets_removed", 0) == 0  # too recent to judge
    clock.advance(RECONCILE_AFTER + timedelta(seconds=1))
    assert broker.run(reconciler.reconcile_leases()).get("secrets_removed") == 1
    assert vault_copies(fake_azure) == before  # was: the copy stayed, referenced by nothing

    pause.release()  # the writer was only slow: it cannot record a row pointing at the removed copy
    assert_problem(creating.result(30), 503)
    assert_problem(api.get(f"{URL}/{setup.prefix}-user1"), 404)
    assert vault_copies(fake_azure) == before
    created = create_dynamic_secrets(api, setup, users=[setup.users[0].id])  # the user is free again
    assert lease(api, created[0]["name"])["lease"]["status"] == "active"


def test_a_patch_that_dies_after_switching_the_secret_leaves_only_the_new_copy(
    api: httpx.Client,
    setup: EntraSetup,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    pool: Any,
) -> None:
    name = one_secret(api, setup)
    old = broker.run(records.get(DynamicSecret, "ds", name))
    assert old is not None
    _, new_secret = fake_azure.add_password(setup.app, display_name="next")
    pause = Pause()  # the row points at the new copy; the replaced one is not deleted yet
    retire = secret_copies.retire
    monkeypatch.setattr(secret_copies, "retire", pause.wrap(retire))
    patching = background(pool, lambda: api.patch(f"{URL}/{name}", json={"clientSecret": new_secret}))
    pause.wait()  # ... and the process dies here
    switched = broker.run(records.get(DynamicSecret, "ds", name))
    assert switched is not None
    assert switched.credential_ref != old.credential_ref
    assert {old.credential_ref, switched.credential_ref} <= vault_copies(fake_azure)
    clock.advance(RECONCILE_AFTER + timedelta(seconds=1))
    monkeypatch.setattr(secret_copies, "retire", retire)  # the reconciler's own call is not paused
    assert broker.run(reconciler.reconcile_leases()).get("secrets_retired") == 1
    assert old.credential_ref not in vault_copies(fake_azure)  # was: kept, referenced by nothing
    assert switched.credential_ref in vault_copies(fake_azure)
    pause.release()
    assert patching.result(30).status_code == 200  # a late finish deletes nothing more
    assert switched.credential_ref in vault_copies(fake_azure)
    assert setup.signs_in(setup.users[0].user_principal_name, lease(api, name)["credentials"]["password"])
