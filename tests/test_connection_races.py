"""Regression tests for issue 11's connection and rotation defects: a refused request changes
nothing, one writer per connection, and nothing left behind when a delete races a rotation.

Each pauses the broker at the racing point with the stand-in (a `delay` fault holds one Azure
request while the test acts), so the interleaving is the same on every run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.harness import ServerHandle, assert_problem
from tests.rotation_helpers import (
    BROKER_MARK,
    PREFIX,
    Connections,
    assert_validates,
    create_body,
    current_secret,
    make_app,
    pending_vault_secrets,
    rotation_block,
    rotation_row,
    run_reconciler,
)

HOLD_SECONDS = 3.0


@pytest.fixture
def made(api: httpx.Client) -> Iterator[Connections]:
    connections = Connections(api)
    yield connections
    connections.cleanup()


def _in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def _wait_for_request(fake: Any, service: str, pattern: str, method: str, seen: int) -> None:
    """Until the stand-in has received one more matching request than `seen` (it is being held)."""
    deadline = time.monotonic() + 20
    while fake.request_count(service, pattern, method) <= seen:
        assert time.monotonic() < deadline, f"no {method} {pattern} arrived"
        time.sleep(0.02)


def test_delete_with_a_stale_if_match_is_412_and_changes_nothing(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    stale = api.get(f"{PREFIX}/{body['id']}").headers["ETag"]
    assert api.patch(f"{PREFIX}/{body['id']}", json={"description": "moved on"}).status_code == 200
    before = {c.key_id for c in app.passwords()}

    assert_problem(api.delete(f"{PREFIX}/{body['id']}", headers={"If-Match": stale}), 412)

    assert {c.key_id for c in app.passwords()} == before, "the app's secrets are untouched"
    assert api.get(f"{PREFIX}/{body['id']}").json()["rotation"]["enabled"] is True
    assert rotation_row(broker, body["id"]) is not None
    assert_validates(broker, body["id"])


def test_rotate_now_during_delete_leaves_nothing_behind(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    # A hand-made broker-marked secret nothing tracks (e.g. a lost addPassword answer of long ago).
    fake_azure.add_password(app.app, display_name=f"{BROKER_MARK} untracked")
    removals = fake_azure.request_count("graph", "removePassword", "POST")
    fake_azure.inject("graph", "delay", path_pattern="removePassword", seconds=HOLD_SECONDS)

    deleting, answers = _in_background(lambda: api.delete(f"{PREFIX}/{body['id']}"))
    _wait_for_request(fake_azure, "graph", "removePassword", "POST", removals)
    rotated = api.post(f"{PREFIX}/{body['id']}/rotate")
    deleting.join(30)

    assert answers, "the DELETE answered"
    assert answers[0].status_code == 204, answers[0].text
    assert_problem(rotated, 409)
    assert app.broker_keys() == [], [(c.key_id, c.display_name) for c in app.passwords()]
    assert pending_vault_secrets(fake_azure) == []
    assert rotation_row(broker, body["id"]) is None
    assert_problem(api.get(f"{PREFIX}/{body['id']}"), 404)


def test_patch_of_the_client_secret_racing_a_rotation_never_locks_the_connection_out(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    new_key, new_secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    patch = {
        "credentials": {"clientSecret": new_secret},
        "rotation": {"enabled": True, "clientSecretKeyId": new_key},
    }
    # Hold the PATCH just after it wrote the connection row (deleting the previous secret's name).
    deletes = fake_azure.request_count("keyvault", r"/secrets/", "DELETE")
    fake_azure.inject("keyvault", "delay", path_pattern=r"/secrets/", method="DELETE", seconds=HOLD_SECONDS)

    patching, answers = _in_background(lambda: api.patch(f"{PREFIX}/{body['id']}", json=patch))
    _wait_for_request(fake_azure, "keyvault", r"/secrets/", "DELETE", deletes)
    rotated = api.post(f"{PREFIX}/{body['id']}/rotate")
    patching.join(60)

    assert answers, "the PATCH answered"
    assert rotated.status_code in (200, 409), rotated.text
    if rotated.status_code == 409:
        assert answers[0].status_code == 200, answers[0].text
        assert current_secret(broker, body["id"]) == new_secret
    # Whoever won, the connection's stored secret is on the app and signs in.
    matched = fake_azure.state.check_secret(app.app, current_secret(broker, body["id"]))
    assert matched is not None, "the connection's secret was removed from the app"
    assert_validates(broker, body["id"])
    shown = api.get(f"{PREFIX}/{body['id']}").json()["rotation"]
    assert shown["clientSecretKeyId"] == matched.key_id.lower()
    assert api.post(f"{PREFIX}/{body['id']}/rotate").status_code == 200  # and it still rotates
    assert_validates(broker, body["id"])


def test_a_lost_add_password_answer_creates_no_second_secret(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    working = current_secret(broker, body["id"])
    added = fake_azure.request_count("graph", "addPassword", "POST")
    fake_azure.inject("graph", "lost", path_pattern="addPassword")  # Graph adds it; the answer is lost

    failed = api.post(f"{PREFIX}/{body['id']}/rotate")

    assert_problem(failed, 502)
    assert fake_azure.request_count("graph", "addPassword", "POST") == added + 1, "never sent twice"
    assert len(app.broker_keys()) == 1, "the adopted secret was removed, the working one kept"
    assert current_secret(broker, body["id"]) == working
    assert_validates(broker, body["id"])
    assert api.post(f"{PREFIX}/{body['id']}/rotate").status_code == 200
    assert len(app.broker_keys()) == 1
    assert_validates(broker, body["id"])


def test_a_rotation_step_never_outlives_its_claim(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    """An Azure call under a claim is cut at the claim's end; what it may still do is undone later."""
    from core import clock
    from core.audit import SYSTEM
    from rotation import rotator, store
    from tests.rotation_helpers import assert_one_working_broker_secret, run_timer

    app = make_app(fake_azure)
    body = made.create(app)
    record = broker.run(store.load(body["id"]))
    record = broker.run(rotator.begin(record, SYSTEM, "manual", move_due=True))
    clock.advance(rotator.STUCK_AFTER - timedelta(seconds=2))  # the claim ends in 2 s
    fake_azure.inject("graph", "delay", path_pattern="addPassword", seconds=8)  # Azure answers in 8 s

    started = time.monotonic()
    record = broker.run(rotator.run(record))

    assert time.monotonic() - started < 6, "the step was cut at its claim's end, not after Azure answered"
    assert record.status == "failed"
    assert record.step == "planned", "the unknown outcome stays recorded for the takeover"
    deadline = time.monotonic() + 20
    while len(app.broker_keys()) < 2:  # the held addPassword lands after the claim ended
        assert time.monotonic() < deadline
        time.sleep(0.1)
    clock.advance(timedelta(minutes=6))
    assert run_timer(broker).get("resumed") == 1  # the takeover removes what landed, then rotates
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


@pytest.mark.parametrize(
    ("override", "field"),
    [({"timeZone": "Europe"}, "rotation.timeZone"), ({"timeZone": "Mars/Olympus"}, "rotation.timeZone")],
)
def test_a_time_zone_that_is_not_a_zone_is_a_422(
    api: httpx.Client, fake_azure: Any, override: dict[str, str], field: str
) -> None:
    app = make_app(fake_azure)
    answer = api.post(PREFIX, json=create_body(app, rotation_block(app, **override)))
    assert_problem(answer, 422, field)


def test_a_300_character_name_is_a_422_naming_it(api: httpx.Client, fake_azure: Any) -> None:
    app = make_app(fake_azure)
    assert_problem(api.post(PREFIX, json=create_body(app, None, name="n" * 300)), 422, "name")
    devops = {
        "name": "d" * 300,
        "method": "access-token",
        "credentials": {"accessToken": "x", "orgName": "o"},
    }
    assert_problem(api.post("/api/v1/app-connections/azure-devops", json=devops), 422, "name")


def test_a_patch_racing_a_delete_is_refused_and_the_delete_finishes(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    """Found by the concurrency harness (seeds 1003, 1234): a rename PATCH that wrote while a DELETE
    was removing the app's secrets made the DELETE's row delete fail (409) after the rotation was
    gone: a refused request had changed state. The DELETE now claims the row first."""
    app = make_app(fake_azure)
    body = made.create(app)
    removals = fake_azure.request_count("graph", "removePassword", "POST")
    fake_azure.inject("graph", "delay", path_pattern="removePassword", seconds=HOLD_SECONDS)

    deleting, answers = _in_background(lambda: api.delete(f"{PREFIX}/{body['id']}"))
    _wait_for_request(fake_azure, "graph", "removePassword", "POST", removals)
    renamed = api.patch(f"{PREFIX}/{body['id']}", json={"name": f"{body['name']}-renamed"})
    deleting.join(30)

    assert answers, "the DELETE answered"
    assert answers[0].status_code == 204, answers[0].text
    assert assert_problem(renamed, 409)["type"].endswith("#connection-deleting")
    assert app.broker_keys() == [], [(c.key_id, c.display_name) for c in app.passwords()]
    assert rotation_row(broker, body["id"]) is None
    assert_problem(api.get(f"{PREFIX}/{body['id']}"), 404)


def test_a_delete_that_loses_to_a_patch_changes_nothing(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    """A DELETE whose read is older than a PATCH's write is a 409 before any side effect. The window
    between the DELETE's read and its claim is too short to hit from outside, so the test pauses
    there: the DELETE is handed its own (now stale) read while a rename has been written."""
    app = make_app(fake_azure)
    body = made.create(app)
    before = {c.key_id for c in app.passwords()}
    reads = fake_azure.request_count("graph", "removePassword", "POST")

    async def delete_after_a_rename() -> Any:
        from connections import client_secrets, lifecycle, store
        from core import records

        record = await store.get_record(client_secrets.KIND, body["id"])
        # Another request renames the connection between this DELETE's read and its claim.
        await records.replace(record.model_copy(update={"name": f"{record.name}-moved"}))
        original = store.get_record

        async def stale(kind: str, connection_id: str) -> Any:
            return record

        store.get_record = stale  # type: ignore[assignment]  (the DELETE sees its own older read)
        try:
            from core.auth import Caller, Role

            admin = Caller(id="t", name="t", roles=frozenset({Role.ADMIN}))
            return await lifecycle.delete(client_secrets.SPEC, body["id"], admin, if_match=None)
        finally:
            store.get_record = original  # type: ignore[assignment]

    from core.tables import ConcurrencyConflict

    with pytest.raises(ConcurrencyConflict):
        broker.run(delete_after_a_rename())
    assert fake_azure.request_count("graph", "removePassword", "POST") == reads
    assert {c.key_id for c in app.passwords()} == before, "the app's secrets are untouched"
    assert rotation_row(broker, body["id"]) is not None
    assert_validates(broker, body["id"])


def test_a_delete_that_fails_half_way_is_finished_by_the_reconciler(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    """Found by the concurrency harness (seed 3028): a DELETE that failed after claiming the row (an
    Azure fault while the broker's secrets were removed) left the connection `deleting` for good,
    refusing every PATCH and rotation until someone sent the DELETE again. The reconciler now sends
    it once the failed DELETE's claim has run out, and not before."""
    from core import clock

    app = make_app(fake_azure)
    body = made.create(app)
    fake_azure.inject("graph", "500", count=None, path_pattern="removePassword")
    assert api.delete(f"{PREFIX}/{body['id']}").status_code >= 500
    fake_azure.reset_faults()
    assert app.broker_keys(), "the failed DELETE left the broker's secret on the app"
    assert_problem(api.post(f"{PREFIX}/{body['id']}/rotate"), 409)

    assert _reconcile(broker).get("busy") == 1, "the DELETE's claim is still live: nobody takes over"
    assert api.get(f"{PREFIX}/{body['id']}").status_code == 200

    clock.advance(timedelta(minutes=6))
    assert _reconcile(broker).get("finished") == 1
    assert_problem(api.get(f"{PREFIX}/{body['id']}"), 404)
    assert app.broker_keys() == [], [(c.key_id, c.display_name) for c in app.passwords()]
    assert rotation_row(broker, body["id"]) is None
    assert pending_vault_secrets(fake_azure) == []
    assert _reconcile(broker) == {}, "nothing left to finish"


def _reconcile(broker: ServerHandle) -> dict[str, Any]:
    from connections.reconciler import finish_deletes

    return broker.run(finish_deletes())


def test_two_patches_of_the_secret_leave_the_later_ones_key_id_on_the_rotation(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    """Found by the concurrency harness (seed 3023): two PATCHes of the client secret, the first held
    between its connection write and its rotation update while the second did both. The first then
    wrote its own Key ID and revision over the second's, so the rotation tracked a secret the
    connection no longer used and refused to run ("rotation settings are being updated") for good.
    Now the first finds its revision replaced and leaves the rotation row to the second."""
    app = make_app(fake_azure)
    body = made.create(app)
    bodies = []
    for label in ("first", "second"):
        key, secret = fake_azure.add_password(app.app, display_name=f"{label} by hand")
        bodies.append(
            {"credentials": {"clientSecret": secret}, "rotation": {"enabled": True, "clientSecretKeyId": key}}
        )
    deletes = fake_azure.request_count("keyvault", r"/secrets/", "DELETE")
    fake_azure.inject("keyvault", "delay", path_pattern=r"/secrets/", method="DELETE", seconds=HOLD_SECONDS)

    first, answers = _in_background(lambda: api.patch(f"{PREFIX}/{body['id']}", json=bodies[0]))
    _wait_for_request(fake_azure, "keyvault", r"/secrets/", "DELETE", deletes)  # its row is written
    second = api.patch(f"{PREFIX}/{body['id']}", json=bodies[1])
    first.join(60)

    assert second.status_code == 200, second.text
    assert answers, "the first PATCH answered"
    assert answers[0].status_code == 200, answers[0].text
    second_key = bodies[1]["rotation"]["clientSecretKeyId"]
    assert current_secret(broker, body["id"]) == bodies[1]["credentials"]["clientSecret"]
    assert api.get(f"{PREFIX}/{body['id']}").json()["rotation"]["clientSecretKeyId"] == second_key
    assert rotation_row(broker, body["id"]).connection_rev == _credential_rev(broker, body["id"])
    rotated = api.post(f"{PREFIX}/{body['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    assert second_key not in {c.key_id.lower() for c in app.passwords()}, "the rotation replaced it"
    assert_validates(broker, body["id"])


def _credential_rev(broker: ServerHandle, connection_id: str) -> str:
    from connections import client_secrets, store

    return broker.run(store.get_record(client_secrets.KIND, connection_id)).credential_rev


def test_a_secret_patch_refused_by_a_half_done_rotation_is_followed_by_the_next_one(
    made: Connections, api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    """Found by the concurrency harness (seed 5054): a rotation began while a PATCH of the secret was
    between its checks and its row write, and its addPassword failed (outcome unknown), so it stayed
    half-done. The PATCH wrote the connection but could not update the rotation (409), and the
    rotation then refused to run for good. The connection row now names its secret's Key ID, and the
    next run follows it: the PATCH's secret is the one rotated away, the old broker secret removed."""
    from core import clock

    app = make_app(fake_azure)
    body = made.create(app)
    first_broker_key = body["rotation"]["clientSecretKeyId"]
    key, secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    patch = {"credentials": {"clientSecret": secret}, "rotation": {"enabled": True, "clientSecretKeyId": key}}
    puts = fake_azure.request_count("keyvault", r"/secrets/", "PUT")
    fake_azure.inject("keyvault", "delay", path_pattern=r"/secrets/", method="PUT", seconds=HOLD_SECONDS)

    patching, answers = _in_background(lambda: api.patch(f"{PREFIX}/{body['id']}", json=patch))
    _wait_for_request(fake_azure, "keyvault", r"/secrets/", "PUT", puts)  # checked, not yet written
    fake_azure.inject("graph", "500", count=None, path_pattern="addPassword")
    assert_problem(api.post(f"{PREFIX}/{body['id']}/rotate"), 502)  # half-done: addPassword unknown
    patching.join(60)
    fake_azure.reset_faults()

    assert answers, "the PATCH answered"
    assert answers[0].status_code == 409, answers[0].text  # the rotation block was not applied
    assert current_secret(broker, body["id"]) == secret
    clock.advance(timedelta(minutes=6))  # past the half-done run's claim

    rotated = api.post(f"{PREFIX}/{body['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["clientSecretKeyId"]
    assert new_key not in (key, first_broker_key)
    assert_validates(broker, body["id"])
    assert key not in app.key_ids(), "the PATCH's secret was rotated away"
    run_reconciler(broker)
    assert [c.key_id.lower() for c in app.broker_keys()] == [new_key], "the old broker secret is removed"


def test_a_rotation_timer_running_during_a_create_cannot_begin_its_first_run(
    made: Connections, fake_azure: Any, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the soak (seed 12040). The create wrote its rotation row due now and began its first
    run in a second write; a rotation timer in between began a run of its own, the create's begin
    lost the row and answered 409, and its rollback deleted the connection while the timer's run was
    adding a secret, which then stayed on the app with nothing tracking it. The timer here runs right
    after the row is written (the racing point)."""
    from rotation import store
    from tests.rotation_helpers import assert_one_working_broker_secret, run_timer

    write_row = store.create
    timer: list[dict[str, Any]] = []

    async def row_then_timer(record: Any) -> Any:
        written = await write_row(record)
        if not timer:
            from rotation.timer import rotate_due_connections

            timer.append(await rotate_due_connections())
        return written

    monkeypatch.setattr(store, "create", row_then_timer)
    app = make_app(fake_azure)
    body = made.create(app)  # asserts 201

    assert timer, "the timer ran at the racing point"
    assert timer[0].get("busy") == 1, timer  # the create's run was already claimed
    assert body["rotation"]["status"] == "scheduled", body["rotation"]  # rotated by the create itself
    monkeypatch.undo()
    assert run_timer(broker).get("rotated", 0) == 0  # not due again until its schedule
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_a_create_that_dies_during_its_first_rotation_keeps_the_connection_for_the_takeover(
    made: Connections,
    api: httpx.Client,
    fake_azure: Any,
    broker: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A create whose first rotation dies between its steps (after addPassword) is rolled back; the
    rollback used to delete the connection and its credentials under the half-done run, so the
    secret the run had added could never be removed. Now the connection stays (the run is in
    flight) and the takeover finishes the run with its credentials."""
    from core import clock
    from rotation import rotator
    from tests.rotation_helpers import assert_one_working_broker_secret, run_timer

    advance = rotator.advance

    async def dies_after_adding(record: Any) -> Any:
        record = await advance(record)
        if record.step == "added":
            raise asyncio.CancelledError  # the request's task cancelled here, as the harness's crash
        return record

    monkeypatch.setattr(rotator, "advance", dies_after_adding)
    app = make_app(fake_azure)
    request = create_body(app, rotation_block(app))
    try:
        answer: int | None = api.post(PREFIX, json=request).status_code
    except httpx.TransportError:
        answer = None  # the server dropped the request with its task
    monkeypatch.undo()

    assert answer is None or answer >= 500
    assert len(app.broker_keys()) == 1, "the run added its secret before it died"
    kept = [c for c in api.get(PREFIX).json()["items"] if c["name"] == request["name"]]
    assert len(kept) == 1, "the connection stays while its first run is in flight"
    made.ids.append(kept[0]["id"])
    clock.advance(rotator.STUCK_AFTER + timedelta(minutes=1))
    assert run_timer(broker).get("resumed") == 1  # the takeover finishes (or undoes) the run
    assert_one_working_broker_secret(fake_azure, broker, app, kept[0]["id"])
