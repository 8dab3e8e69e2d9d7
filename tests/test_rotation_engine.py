"""The rotation timer, the state machine and the reconciler against the stand-in for Azure.

Crashes are simulated two ways: stopping the state machine between steps (the intent is
recorded, the next Azure call never happens), and killing it right after an Azure call, before
the step is recorded (a `Crash` that no handler catches, raised where the record would be
written). Either way the next timer run or the reconciler must leave exactly one working
broker-made secret on the app and nothing orphaned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core import clock
from rotation import azure_steps, cleanup, runs
from tests.harness import ServerHandle
from tests.rotation_helpers import (
    PREFIX,
    Connections,
    RotatingApp,
    assert_one_working_broker_secret,
    assert_validates,
    current_secret,
    make_app,
    pending_vault_secrets,
    rotation_row,
    run_reconciler,
    run_timer,
)


class Crash(BaseException):
    """The worker dies here: no `except Exception` runs, nothing more is recorded."""


@pytest.fixture
def made(api: httpx.Client) -> Iterator[Connections]:
    connections = Connections(api)
    yield connections
    connections.cleanup()


@pytest.fixture
def quick_verify() -> Iterator[None]:
    """Keep replication waits short in tests (the stand-in's delay is set to 1-2 s)."""

    saved = azure_steps.VERIFY_TIMEOUT_SECONDS, azure_steps.VERIFY_FIRST_DELAY_SECONDS
    azure_steps.VERIFY_FIRST_DELAY_SECONDS = 0.25
    yield
    azure_steps.VERIFY_TIMEOUT_SECONDS, azure_steps.VERIFY_FIRST_DELAY_SECONDS = saved


def addpassword_count(fake: Any, app: RotatingApp) -> int:
    return int(fake.request_count("graph", rf"/applications/{app.app.id}/addPassword", "POST"))


def _manual(broker: ServerHandle, connection_id: str) -> Any:
    from core.audit import SYSTEM

    return broker.run(runs.rotate_now(connection_id, SYSTEM, trigger="manual"))


def test_timer_rotates_the_due_connection_and_not_the_other(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    daily, monthly = make_app(fake_azure), make_app(fake_azure)
    first = made.create(daily, intervalDays=1)
    second = made.create(monthly, intervalDays=30)
    key_daily = first["rotation"]["clientSecretKeyId"]
    key_monthly = second["rotation"]["clientSecretKeyId"]

    assert run_timer(broker).get("rotated", 0) == 0  # nothing is due yet
    clock.advance(timedelta(days=2))
    summary = run_timer(broker)
    assert summary.get("rotated", 0) >= 1, summary

    after = made.get(first["id"])["rotation"]
    assert after["clientSecretKeyId"] != key_daily
    assert after["nextRotationAt"] > clock.isoformat(clock.now())
    assert_one_working_broker_secret(fake_azure, broker, daily, first["id"])
    assert made.get(second["id"])["rotation"]["clientSecretKeyId"] == key_monthly
    assert addpassword_count(fake_azure, monthly) == 1  # only the rotation on create
    # The next run finds nothing due for either.
    assert run_timer(broker).get("rotated", 0) == 0


def test_after_downtime_one_catch_up_rotation(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app, intervalDays=1)
    clock.advance(timedelta(days=10))  # ten daily slots missed
    run_timer(broker)
    run_timer(broker)
    assert addpassword_count(fake_azure, app) == 2  # create + one catch-up, not ten
    rotation = made.get(body["id"])["rotation"]
    assert rotation["nextRotationAt"] > clock.isoformat(clock.now() + timedelta(hours=23))
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_two_timer_runs_at_once_rotate_once(made: Connections, fake_azure: Any, broker: ServerHandle) -> None:
    from rotation.timer import rotate_due_connections

    app = make_app(fake_azure)
    body = made.create(app, intervalDays=1)
    clock.advance(timedelta(days=2))

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(rotate_due_connections(), rotate_due_connections()))

    summaries = broker.run(both())
    assert addpassword_count(fake_azure, app) == 2, summaries  # create + exactly one timer rotation
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert made.get(body["id"])["rotation"]["status"] == "scheduled"


def test_replication_delay_keeps_the_old_secret_until_the_new_one_works(
    made: Connections, fake_azure: Any, broker: ServerHandle, quick_verify: None
) -> None:
    from rotation import rotator

    app = make_app(fake_azure)
    body = made.create(app)
    old_key = body["rotation"]["clientSecretKeyId"]
    old_secret = current_secret(broker, body["id"])
    fake_azure.set_replication_delay(1.5)
    fake_azure.reset_counters()

    from core.audit import SYSTEM
    from rotation import store

    async def until_verified() -> Any:
        record = await store.load(body["id"])
        assert record is not None
        record = await rotator.begin(record, SYSTEM, "manual", move_due=True)
        record = await rotator.advance(record)  # addPassword: the new secret is not usable yet
        assert record.step == "added"
        assert old_key in app.key_ids()
        record = await rotator.advance(record)  # waits until it gets a token
        assert record.step == "verified"
        return record

    record = broker.run(until_verified())
    failed_tokens = [r for r in fake_azure.request_log("token") if r.status >= 400]
    assert failed_tokens, "the new secret was refused while it replicated, and retried"
    assert old_key in app.key_ids()  # still there: the connection has not switched yet
    assert current_secret(broker, body["id"]) == old_secret
    record = broker.run(rotator.run(record))
    assert record.status == "scheduled"
    key = assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert key.key_id == record.client_secret_key_id != old_key


def test_a_secret_that_never_works_is_rolled_back_and_retried_with_backoff(
    made: Connections,
    fake_azure: Any,
    broker: ServerHandle,
    quick_verify: None,
    caplog: pytest.LogCaptureFixture,
) -> None:

    app = make_app(fake_azure)
    body = made.create(app)
    old_key = body["rotation"]["clientSecretKeyId"]
    azure_steps.VERIFY_TIMEOUT_SECONDS = 1.0
    fake_azure.set_replication_delay(30)
    caplog.set_level(logging.WARNING)

    response = made.api.post(f"{PREFIX}/{body['id']}/rotate")
    assert response.status_code == 502, response.text
    problem = response.json()
    assert problem["rotation"]["status"] == "failed"
    assert "did not get a token" in problem["rotation"]["lastError"]
    assert "AADSTS7000215" in problem["rotation"]["lastError"]
    assert app.key_ids() == {old_key}  # the new one is gone, the working one kept
    assert not pending_vault_secrets(fake_azure)
    row = rotation_row(broker, body["id"])
    assert row.failures == 1
    assert row.step == ""
    assert row.next_rotation_at <= clock.isoformat(clock.now() + timedelta(minutes=2))
    assert '"event":"rotation.failed"' in caplog.text
    audit = made.api.get("/api/v1/audit-logs", params={"resourceId": body["id"], "action": "rotation.rotate"})
    assert "failure" in {e["result"] for e in audit.json()["items"]}

    # The backoff elapses, Entra has replicated: the timer's retry succeeds.
    fake_azure.set_replication_delay(0)
    clock.advance(timedelta(minutes=3))
    assert run_timer(broker).get("rotated", 0) >= 1
    rotation = made.get(body["id"])["rotation"]
    assert rotation["status"] == "scheduled"
    assert rotation["lastError"] is None
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_graph_throttling_and_unavailability_are_retried(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    fake_azure.reset_counters()
    fake_azure.inject("graph", "429", count=1, path_pattern="addPassword", retry_after=1)
    fake_azure.inject("graph", "503", count=1, path_pattern="removePassword", retry_after=1)
    record = _manual(broker, body["id"])
    assert record.status == "scheduled", record.last_error
    assert addpassword_count(fake_azure, app) == 2  # the 429 and its retry
    assert fake_azure.request_count("graph", "removePassword") == 2
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_a_graph_500_on_add_is_undone_and_the_retry_succeeds(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    fake_azure.inject("graph", "500", count=1, path_pattern="addPassword")
    record = _manual(broker, body["id"])
    assert record.status == "failed"
    assert "500" in (record.last_error or "")
    assert len(app.broker_keys()) == 1  # only the current one
    clock.advance(timedelta(minutes=3))
    run_timer(broker)
    assert made.get(body["id"])["rotation"]["status"] == "scheduled"
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


# ---------------------------------------------------------------- crashes


STEPS = ["planned", "added", "verified", "stored"]


@pytest.mark.parametrize("stop_at", STEPS)
@pytest.mark.parametrize("recover_with", ["timer", "reconciler"])
def test_a_crash_between_steps_is_finished_or_undone(
    made: Connections, fake_azure: Any, broker: ServerHandle, stop_at: str, recover_with: str
) -> None:
    """The intent of the next step is recorded, then the worker dies before acting on it."""
    from core.audit import SYSTEM
    from rotation import rotator, store

    app = make_app(fake_azure)
    body = made.create(app)
    before = body["rotation"]["clientSecretKeyId"]

    async def until(step: str) -> Any:
        record = await store.load(body["id"])
        assert record is not None
        record = await rotator.begin(record, SYSTEM, "manual", move_due=True)
        while record.step != step:
            record = await rotator.advance(record)
        return record

    broker.run(until(stop_at))
    assert made.get(body["id"])["rotation"]["status"] == "rotating"
    # Still owned by the (dead) worker: nobody takes over yet.
    assert run_reconciler(broker).get("fixed", 0) == 0
    assert run_timer(broker).get("resumed", 0) == 0

    clock.advance(timedelta(minutes=6))
    summary = run_timer(broker) if recover_with == "timer" else run_reconciler(broker)
    assert summary.get("resumed", 0) + summary.get("fixed", 0) >= 1, summary

    rotation = made.get(body["id"])["rotation"]
    assert rotation["status"] == "scheduled", rotation
    key = assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert key.key_id == rotation["clientSecretKeyId"] != before
    assert not pending_vault_secrets(fake_azure)


CRASH_AFTER = {
    # The Azure call of a step happened; the worker dies before recording it. A process dying between an
    # Azure call and the next table write is what no stand-in can produce, so this one test swaps the
    # rotator's own record function for one that raises `Crash` (a BaseException, like a killed worker).
    "add": ("_save_step", "added"),
    "verify": ("_save_step", "verified"),
    "store": ("_save_step", "stored"),
    "remove": ("_finish", None),
}


@pytest.mark.parametrize("crash_after", list(CRASH_AFTER))
def test_a_crash_right_after_an_azure_call_leaves_no_orphan(
    made: Connections,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    crash_after: str,
) -> None:
    from rotation import rotator

    app = make_app(fake_azure)
    body = made.create(app)
    before = body["rotation"]["clientSecretKeyId"]
    name, step = CRASH_AFTER[crash_after]
    real = getattr(rotator, name)

    async def dying(record: Any, *args: Any) -> Any:
        if step is None or args[0] == step:
            raise Crash(crash_after)
        return await real(record, *args)

    monkeypatch.setattr(rotator, name, dying)
    with pytest.raises(Crash):
        _manual(broker, body["id"])
    monkeypatch.setattr(rotator, name, real)
    if crash_after == "add":
        assert len(app.broker_keys()) == 2  # the new one exists, and the row does not know its Key ID

    clock.advance(timedelta(minutes=6))
    run_reconciler(broker)
    run_timer(broker)
    rotation = made.get(body["id"])["rotation"]
    assert rotation["status"] == "scheduled", rotation
    key = assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert key.key_id == rotation["clientSecretKeyId"]
    assert key.key_id != before
    assert not pending_vault_secrets(fake_azure)


def test_a_crash_during_a_failing_graph_leaves_a_working_secret(
    made: Connections, fake_azure: Any, broker: ServerHandle, quick_verify: None
) -> None:
    """Crash after add, and Graph fails while the reconciler undoes it: retried until clean."""
    from core.audit import SYSTEM
    from rotation import rotator, store

    app = make_app(fake_azure)
    body = made.create(app)

    async def added() -> Any:
        record = await store.load(body["id"])
        assert record is not None
        record = await rotator.begin(record, SYSTEM, "manual", move_due=True)
        return await rotator.advance(record)

    azure_steps.VERIFY_TIMEOUT_SECONDS = 1.0
    broker.run(added())
    clock.advance(timedelta(minutes=6))
    # The app's tenant cannot issue tokens (the new secret cannot be verified), and Graph fails
    # for the app (nothing can be removed).
    fake_azure.inject("token", "500", count=None, path_pattern=app.tenant.id)
    fake_azure.inject("graph", "500", count=None, path_pattern=f"{app.app.app_id}|{app.app.id}")
    run_reconciler(broker)
    row = rotation_row(broker, body["id"])
    assert row.status == "failed"
    assert row.step == "added"  # the undo failed too: still tracked, retried later
    fake_azure.reset_faults()
    assert_one_working_broker_secret_or_two(fake_azure, broker, app, body["id"])

    clock.advance(timedelta(minutes=10))
    run_timer(broker)
    assert made.get(body["id"])["rotation"]["status"] == "scheduled"
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def assert_one_working_broker_secret_or_two(
    fake: Any, broker: ServerHandle, app: RotatingApp, cid: str
) -> None:
    """Mid-recovery: the connection's secret works, the half-made one is still tracked by the row."""
    secret = current_secret(broker, cid)
    assert fake.state.check_secret(app.app, secret) is not None
    row = rotation_row(broker, cid)
    tracked = {row.client_secret_key_id, row.new_key_id} - {None}
    assert app.key_ids() <= tracked | {
        k.key_id for k in app.broker_keys() if k.display_name == row.new_display_name
    }


def test_the_timer_reads_only_due_index_entries(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    from core import tables

    for _ in range(3):
        made.create(make_app(fake_azure))
    tables.stats.reset()
    summary = run_timer(broker)
    assert summary["due"] == 0
    assert tables.stats.entities_read == 0  # three rotation rows exist; none is read
    assert tables.stats.operations == 1  # one range query of the due index


def test_dangling_index_entries_are_dropped_only_when_old(broker: ServerHandle) -> None:
    import uuid

    from core import tables
    from rotation import store

    ghost_old, ghost_new = str(uuid.uuid4()), str(uuid.uuid4())
    old_key = store.index_key(clock.isoformat(clock.now() - timedelta(minutes=30)), ghost_old)
    new_key = store.index_key(clock.isoformat(clock.now()), ghost_new)

    async def seed() -> None:
        for key, cid in ((old_key, ghost_old), (new_key, ghost_new)):
            await tables.upsert(store.INDEX_TABLE, store.INDEX_PK, key, {"connectionId": cid})

    async def present(key: str) -> bool:
        return await tables.get(store.INDEX_TABLE, store.INDEX_PK, key) is not None

    broker.run(seed())
    assert run_timer(broker).get("stale", 0) >= 2
    assert not broker.run(present(old_key))  # no row behind it for long: dropped
    assert broker.run(present(new_key))  # may be a create in progress (index first): kept for now
    clock.advance(timedelta(minutes=6))
    run_timer(broker)
    assert not broker.run(present(new_key))


# --------------- broker-made secrets a PATCH replaced (pendingRemovalKeyIds)


def _switch_secret(broker: ServerHandle, fake_azure: Any, app: RotatingApp, connection_id: str) -> str:
    """What a PATCH of a new client secret (with its Key ID) does, through the same services."""
    from connections import client_secrets, lifecycle
    from connections.kinds import ConnectionChanges
    from core.audit import SYSTEM
    from rotation.service import RotationSettings

    new_key_id, new_secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    settings = RotationSettings.model_validate({"enabled": True, "clientSecretKeyId": new_key_id})

    async def patch() -> None:
        changes = ConnectionChanges(credentials={"clientSecret": new_secret})
        await lifecycle.update(
            client_secrets.SPEC, connection_id, changes, SYSTEM, if_match=None, extension=settings
        )

    broker.run(patch())
    return new_key_id.lower()


def _lower_keys(app: RotatingApp) -> set[str]:
    return {k.lower() for k in app.key_ids()}


def test_a_crash_between_the_intent_and_remove_password_is_finished_by_the_reconciler(
    made: Connections, fake_azure: Any, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:

    app = make_app(fake_azure)
    body = made.create(app)
    broker_key = app.broker_keys()[0].key_id.lower()

    async def dying(record: Any, caller: Any) -> Any:
        raise Crash("after the row listed the Key ID, before removePassword")

    monkeypatch.setattr(cleanup, "remove_retired", dying)
    with pytest.raises(Crash):
        _switch_secret(broker, fake_azure, app, body["id"])
    monkeypatch.undo()
    row = rotation_row(broker, body["id"])
    assert row.pending_removals() == [broker_key]  # recorded before the Azure call
    assert broker_key in _lower_keys(app)

    summary = run_reconciler(broker)
    assert summary.get("cleaned_up") == 1, summary
    assert _lower_keys(app) == {row.client_secret_key_id}
    assert rotation_row(broker, body["id"]).pending_removals() == []
    assert_validates(broker, body["id"])


def test_two_reconcilers_at_once_remove_a_pending_key_once_without_error(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    from rotation.reconciler import reconcile_rotations

    app = make_app(fake_azure)
    body = made.create(app)
    fake_azure.inject("graph", "500", count=None, path_pattern="removePassword")
    new_key_id = _switch_secret(broker, fake_azure, app, body["id"])
    assert len(rotation_row(broker, body["id"]).pending_removals()) == 1
    fake_azure.reset_faults()

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(reconcile_rotations(), reconcile_rotations()))

    summaries = broker.run(both())
    assert sum(s.get("cleaned_up", 0) for s in summaries) >= 1, summaries
    assert _lower_keys(app) == {new_key_id}
    assert rotation_row(broker, body["id"]).pending_removals() == []
    assert_validates(broker, body["id"])


def test_the_key_id_in_use_is_never_removed_even_if_listed(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    from rotation import store

    app = make_app(fake_azure)
    body = made.create(app)
    in_use = body["rotation"]["clientSecretKeyId"]

    async def list_it() -> None:  # a corrupt or mistaken list must not lock the connection out
        record = await store.load(body["id"])
        assert record is not None
        await store.mark_cleanup(body["id"])
        record.set_pending_removals([in_use])
        await store.save(record)

    broker.run(list_it())
    removals = int(fake_azure.request_count("graph", "removePassword", "POST"))
    run_reconciler(broker)
    assert int(fake_azure.request_count("graph", "removePassword", "POST")) == removals
    assert rotation_row(broker, body["id"]).pending_removals() == []
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_dangling_cleanup_entries_are_dropped_only_when_old(broker: ServerHandle) -> None:
    import uuid

    from rotation import store

    ghost = str(uuid.uuid4())

    def listed() -> bool:
        return ghost in [e.connection_id for e in broker.run(store.cleanups(limit=1000))]

    broker.run(store.mark_cleanup(ghost))
    run_reconciler(broker)
    assert listed()  # may be a PATCH in progress (entry first, row second): kept for now
    clock.advance(timedelta(minutes=6))
    assert run_reconciler(broker).get("cleanup_stale", 0) >= 1
    assert not listed()
