"""Rotation through the HTTP API: on create, bad settings, PATCH, rotate now, delete, no secret leaks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rotation import cleanup
from tests.harness import ServerHandle, assert_problem
from tests.rotation_helpers import (
    BROKER_MARK,
    PREFIX,
    Connections,
    assert_one_working_broker_secret,
    assert_validates,
    create_body,
    current_secret,
    make_app,
    pending_vault_secrets,
    rotation_block,
    rotation_row,
)


@pytest.fixture
def made(api: httpx.Client) -> Iterator[Connections]:
    connections = Connections(api)
    yield connections
    connections.cleanup()


def test_create_with_rotation_replaces_the_original_secret(
    made: Connections, fake_azure: Any, broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(fake_azure)
    body = made.create(app)
    rotation = body["rotation"]
    key = assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert rotation["clientSecretKeyId"] == key.key_id
    assert rotation["status"] == "scheduled"
    assert rotation["lastError"] is None
    assert rotation["lastRotatedAt"]
    # 30 days at 02:00 Berlin: a whole number of local days later, at 02:00 CET/CEST.
    assert rotation["nextRotationAt"].endswith(("T01:00:00Z", "T00:00:00Z"))
    # The new secret is marked as the broker's and ends after the next rotation plus a margin.
    assert key.display_name.startswith(BROKER_MARK)
    assert key.end.isoformat() > rotation["nextRotationAt"].replace("Z", "")
    assert not pending_vault_secrets(fake_azure)
    assert made.get(body["id"])["rotation"] == rotation
    assert '"event":"rotation.succeeded"' in caplog.text

    # No secret value anywhere: responses, tables, logs.
    secrets = [app.original_secret, current_secret(broker, body["id"])]
    listing = made.api.get(PREFIX).text
    rows = _table_dump(broker)
    audit = made.api.get("/api/v1/audit-logs", params={"resourceId": body["id"]})
    assert audit.status_code == 200
    actions = {e["action"]: e["result"] for e in audit.json()["items"]}
    assert actions.get("rotation.rotate") == "success"
    for secret in secrets:
        for text in (str(body), listing, rows, audit.text, caplog.text):
            assert secret not in text


def _table_dump(broker: ServerHandle) -> str:
    from core import tables

    async def dump() -> str:
        out = []
        for table in ("Rotations", "RotationDue", "AuditLog"):
            async for row in tables.query(table, "PartitionKey ne ''"):
                out.append(repr(row.data))
        return "\n".join(out)

    return broker.run(dump())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rotateAt": "25:00"}, "rotation.rotateAt"),
        ({"rotateAt": "2am"}, "rotation.rotateAt"),
        ({"timeZone": "Europe/Atlantis"}, "rotation.timeZone"),
        ({"intervalDays": 0}, "rotation.intervalDays"),
        ({"intervalDays": 366}, "rotation.intervalDays"),
        ({"clientSecretKeyId": "not-a-guid"}, "rotation.clientSecretKeyId"),
        ({"clientSecretKeyId": "0b1e3a52-1f4e-4c53-9d1a-7b2f1c0d9e11"}, "rotation.clientSecretKeyId"),
        ({"intervalDays": None}, "rotation.intervalDays"),
        ({"everyDays": 3}, "rotation.everyDays"),
    ],
)
def test_bad_rotation_settings_are_422_and_create_nothing(
    made: Connections, fake_azure: Any, overrides: dict[str, Any], field: str
) -> None:
    app = make_app(fake_azure)
    block = rotation_block(app, **overrides)
    block = {k: v for k, v in block.items() if v is not None}
    body = create_body(app, block)
    response = made.api.post(PREFIX, json=body)
    assert_problem(response, 422, field)
    names = [c["name"] for c in made.api.get(PREFIX).json()["items"]]
    assert body["name"] not in names
    assert app.key_ids() == {app.original_key_id}  # nothing was added to the app


def test_rotation_is_refused_for_the_certificate_method(made: Connections, fake_azure: Any) -> None:
    app = make_app(fake_azure)
    body = {
        "name": "cert-with-rotation",
        "method": "certificate",
        "credentials": {
            "tenantId": app.tenant.id,
            "clientId": app.app.app_id,
            "certificate": "x",
            "privateKey": "y",
        },
        "rotation": rotation_block(app),
    }
    assert_problem(made.api.post(PREFIX, json=body), 422, "rotation")


def test_an_app_that_cannot_write_itself_is_reported_and_keeps_its_secret(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    # Application.Read.All: it may read itself (the Key ID check passes) but not add a secret.
    app = make_app(fake_azure, permissions=("Application.Read.All",))
    body = made.create(app)
    rotation = body["rotation"]
    assert rotation["status"] == "failed"
    assert "403" in rotation["lastError"]
    assert app.key_ids() == {app.original_key_id}
    assert current_secret(broker, body["id"]) == app.original_secret
    row = rotation_row(broker, body["id"])
    assert row.failures == 1
    assert row.step == ""


def test_rotate_now_roles_and_outcomes(
    made: Connections,
    fake_azure: Any,
    broker: ServerHandle,
    as_role: Callable[[str], httpx.Client],
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    first = body["rotation"]["clientSecretKeyId"]
    url = f"{PREFIX}/{body['id']}/rotate"

    assert_problem(as_role("Broker.Reader").post(url), 403)
    response = as_role("Broker.Operator").post(url)
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["clientSecretKeyId"] != first
    assert rotated["status"] == "scheduled"
    key = assert_one_working_broker_secret(fake_azure, broker, app, body["id"])
    assert key.key_id == rotated["clientSecretKeyId"]
    assert first not in app.key_ids()

    assert_problem(made.api.post(f"{PREFIX}/00000000-0000-4000-8000-000000000000/rotate"), 404)
    plain = make_app(fake_azure)
    without = made.api.post(PREFIX, json=create_body(plain, None))
    assert without.status_code == 201, without.text
    made.ids.append(without.json()["id"])
    assert without.json()["rotation"] is None
    assert_problem(made.api.post(f"{PREFIX}/{without.json()['id']}/rotate"), 409)


def test_rotate_now_is_409_while_a_rotation_is_in_flight(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    from core.audit import SYSTEM
    from rotation import rotator, store

    app = make_app(fake_azure)
    body = made.create(app)

    async def start() -> Any:
        record = await store.load(body["id"])
        assert record is not None
        return await rotator.begin(record, SYSTEM, "manual", move_due=True)

    record = broker.run(start())
    problem = assert_problem(made.api.post(f"{PREFIX}/{body['id']}/rotate"), 409)
    assert "in flight" in problem["detail"]
    assert made.get(body["id"])["rotation"]["status"] == "rotating"
    assert_problem(
        made.api.patch(f"{PREFIX}/{body['id']}", json={"rotation": {"enabled": True, "intervalDays": 7}}), 409
    )
    broker.run(rotator.run(record))  # the owner finishes
    assert made.get(body["id"])["rotation"]["status"] == "scheduled"
    assert_one_working_broker_secret(fake_azure, broker, app, body["id"])


def test_patch_changes_the_schedule_and_can_disable_it(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    url = f"{PREFIX}/{body['id']}"
    last = body["rotation"]["lastRotatedAt"]

    response = made.api.patch(
        url,
        json={
            "rotation": {"enabled": True, "intervalDays": 7, "rotateAt": "23:45", "timeZone": "Asia/Tokyo"}
        },
    )
    assert response.status_code == 200, response.text
    rotation = response.json()["rotation"]
    assert rotation["intervalDays"] == 7
    assert rotation["timeZone"] == "Asia/Tokyo"
    assert rotation["nextRotationAt"].endswith("T14:45:00Z")  # 23:45 JST
    assert rotation["lastRotatedAt"] == last
    assert rotation["clientSecretKeyId"] == body["rotation"]["clientSecretKeyId"]

    assert_problem(
        made.api.patch(url, json={"rotation": {"enabled": True, "timeZone": "Mars/Base"}}),
        422,
        "rotation.timeZone",
    )
    assert_problem(
        made.api.patch(url, json={"rotation": {"enabled": True, "clientSecretKeyId": app.original_key_id}}),
        422,
        "rotation.clientSecretKeyId",  # removed by the first rotation: no longer on the app
    )

    off = made.api.patch(url, json={"rotation": {"enabled": False}})
    assert off.status_code == 200, off.text
    assert off.json()["rotation"]["status"] == "disabled"
    assert off.json()["rotation"]["nextRotationAt"] is None
    row = rotation_row(broker, body["id"])
    assert row.index_key is None  # out of the due index: the timer never reads it


def test_delete_removes_the_broker_made_secret(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    assert len(app.broker_keys()) == 1
    response = made.api.delete(f"{PREFIX}/{body['id']}")
    assert response.status_code == 204, response.text
    assert app.passwords() == []  # the broker's secret does not outlive the connection
    assert rotation_row(broker, body["id"]) is None


def test_delete_waits_for_azure_rather_than_orphan_a_secret(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    fake_azure.inject("graph", "500", count=None, path_pattern="removePassword")
    assert_problem(made.api.delete(f"{PREFIX}/{body['id']}"), 502)
    assert made.get(body["id"])["rotation"]["status"] == "scheduled"  # nothing was deleted
    assert len(app.broker_keys()) == 1
    fake_azure.reset_faults()
    assert made.api.delete(f"{PREFIX}/{body['id']}").status_code == 204
    assert app.passwords() == []


def test_patching_the_client_secret_moves_the_rotation_to_the_new_key_id(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    url = f"{PREFIX}/{body['id']}"
    tracked = body["rotation"]["clientSecretKeyId"]
    new_key_id, new_secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    credentials = {"clientSecret": new_secret}

    # Without the new secret's Key ID the rotation would keep rotating the previous one: 422, nothing changes.
    problem = assert_problem(
        made.api.patch(url, json={"credentials": credentials}), 422, "rotation.clientSecretKeyId"
    )
    assert "clientSecretKeyId" in problem["errors"][0]["message"]
    assert current_secret(broker, body["id"]) != new_secret
    # A Key ID that is not on the app is refused by Graph's answer, before anything is saved.
    wrong = {
        "credentials": credentials,
        "rotation": {"enabled": True, "clientSecretKeyId": tracked[:-4] + "0000"},
    }
    assert_problem(made.api.patch(url, json=wrong), 422, "rotation.clientSecretKeyId")
    assert current_secret(broker, body["id"]) != new_secret
    assert rotation_row(broker, body["id"]).client_secret_key_id == tracked

    response = made.api.patch(
        url, json={"credentials": credentials, "rotation": {"enabled": True, "clientSecretKeyId": new_key_id}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["rotation"]["clientSecretKeyId"] == new_key_id.lower()
    assert current_secret(broker, body["id"]) == new_secret
    row = rotation_row(broker, body["id"])
    assert row.client_secret_key_id == new_key_id.lower()
    assert not row.broker_owned  # the caller's own secret now

    # The next rotation replaces the new secret (by its Key ID), not the one it tracked before.
    rotated = made.api.post(f"{url}/rotate")
    assert rotated.status_code == 200, rotated.text
    assert new_key_id.lower() not in {k.lower() for k in app.key_ids()}
    assert rotated.json()["clientSecretKeyId"] != new_key_id.lower()


def test_patching_the_client_secret_with_rotation_disabled_forgets_the_old_key_id(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    url = f"{PREFIX}/{body['id']}"
    assert made.api.patch(url, json={"rotation": {"enabled": False}}).status_code == 200
    new_key_id, new_secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    response = made.api.patch(url, json={"credentials": {"clientSecret": new_secret}})
    assert response.status_code == 200, response.text
    assert response.json()["rotation"]["clientSecretKeyId"] is None
    # Enabling it again asks for the Key ID of the secret now in use.
    assert_problem(
        made.api.patch(url, json={"rotation": {"enabled": True}}), 422, "rotation.clientSecretKeyId"
    )
    enabled = made.api.patch(url, json={"rotation": {"enabled": True, "clientSecretKeyId": new_key_id}})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["rotation"]["clientSecretKeyId"] == new_key_id.lower()
    # The broker-made secret it replaced was removed from the app, though rotation was off.
    assert {k.lower() for k in app.key_ids()} == {new_key_id.lower()}


# --------------- a new client secret retires the broker-made one


def _replace_secret(made: Connections, app: Any, connection_id: str, fake_azure: Any) -> tuple[str, str, Any]:
    """PATCH the caller's new secret (with its Key ID); (new Key ID, new secret, response)."""
    new_key_id, new_secret = fake_azure.add_password(app.app, display_name="replaced by hand")
    response = made.api.patch(
        f"{PREFIX}/{connection_id}",
        json={
            "credentials": {"clientSecret": new_secret},
            "rotation": {"enabled": True, "clientSecretKeyId": new_key_id},
        },
    )
    return new_key_id.lower(), new_secret, response


def _audit(made: Connections, connection_id: str, action: str) -> list[dict[str, Any]]:
    answer = made.api.get("/api/v1/audit-logs", params={"resourceId": connection_id})
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["items"] if e["action"] == action]


def _cleanup_entries(broker: ServerHandle) -> list[str]:
    from rotation import store

    return [e.connection_id for e in broker.run(store.cleanups(limit=1000))]


def test_patching_a_new_secret_removes_the_broker_made_one(
    made: Connections, fake_azure: Any, broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(fake_azure)
    body = made.create(app)
    broker_key = app.broker_keys()[0].key_id.lower()
    broker_secret = current_secret(broker, body["id"])

    new_key_id, new_secret, response = _replace_secret(made, app, body["id"], fake_azure)
    assert response.status_code == 200, response.text
    rotation = response.json()["rotation"]
    assert rotation["clientSecretKeyId"] == new_key_id
    assert rotation["pendingRemovalKeyIds"] == []
    # Only the caller's new secret is left on the app, and the connection uses it.
    assert {k.lower() for k in app.key_ids()} == {new_key_id}
    assert current_secret(broker, body["id"]) == new_secret
    assert_validates(broker, body["id"])
    row = rotation_row(broker, body["id"])
    assert row.pending_removals() == []
    assert not row.broker_owned
    assert body["id"] not in _cleanup_entries(broker)
    entries = _audit(made, body["id"], "rotation.cleanup")
    assert [(e["result"], broker_key in e["detail"]) for e in entries] == [("success", True)]
    for secret in (broker_secret, new_secret, app.original_secret):
        for text in (response.text, _table_dump(broker), caplog.text, str(entries)):
            assert secret not in text


def test_a_key_id_change_without_a_new_secret_is_refused_while_the_broker_secret_is_in_use(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    other_key_id, _ = fake_azure.add_password(app.app, display_name="someone else's")
    for enabled in (True, False):
        answer = made.api.patch(
            f"{PREFIX}/{body['id']}",
            json={"rotation": {"enabled": enabled, "clientSecretKeyId": other_key_id}},
        )
        assert_problem(answer, 422, "rotation.clientSecretKeyId")
    row = rotation_row(broker, body["id"])
    assert row.client_secret_key_id == body["rotation"]["clientSecretKeyId"]
    assert row.broker_owned
    assert len(app.broker_keys()) == 1


@pytest.fixture
def short_cleanup() -> Iterator[None]:
    """A removePassword that hangs gives up after half a second (the stand-in hangs for 2 s)."""

    saved = cleanup.CLEANUP_TIMEOUT_SECONDS
    cleanup.CLEANUP_TIMEOUT_SECONDS = 0.5
    yield
    cleanup.CLEANUP_TIMEOUT_SECONDS = saved


@pytest.mark.parametrize("fault", ["503", "429", "timeout"])
def test_a_failed_removal_on_patch_is_tracked_and_finished_by_the_reconciler(
    made: Connections, fake_azure: Any, broker: ServerHandle, short_cleanup: None, fault: str
) -> None:
    from rotation.reconciler import reconcile_rotations

    app = make_app(fake_azure)
    body = made.create(app)
    broker_key = app.broker_keys()[0].key_id.lower()
    fake_azure.inject("graph", fault, count=None, path_pattern="removePassword", seconds=2.0)

    new_key_id, new_secret, response = _replace_secret(made, app, body["id"], fake_azure)
    # The new credentials are valid, so the PATCH succeeds; the cleanup is pending, and says so.
    assert response.status_code == 200, response.text
    rotation = response.json()["rotation"]
    assert rotation["clientSecretKeyId"] == new_key_id
    assert rotation["pendingRemovalKeyIds"] == [broker_key]
    assert made.get(body["id"])["rotation"]["pendingRemovalKeyIds"] == [broker_key]
    assert current_secret(broker, body["id"]) == new_secret
    assert_validates(broker, body["id"])
    assert broker_key in {k.lower() for k in app.key_ids()}  # still on the app, and tracked:
    assert rotation_row(broker, body["id"]).pending_removals() == [broker_key]
    assert body["id"] in _cleanup_entries(broker)
    failure = _audit(made, body["id"], "rotation.cleanup")
    assert [e["result"] for e in failure] == ["failure"]
    assert broker_key in failure[0]["detail"]
    assert new_secret not in failure[0]["detail"]

    # While Azure still fails, the reconciler keeps it listed.
    assert broker.run(reconcile_rotations()).get("cleanup_pending") == 1
    assert rotation_row(broker, body["id"]).pending_removals() == [broker_key]

    fake_azure.reset_faults()
    time.sleep(1.1)  # Graph's last Retry-After (1 s) has passed: the gateway holds this app's calls till then
    summary = broker.run(reconcile_rotations())
    assert summary.get("cleaned_up") == 1, summary
    assert {k.lower() for k in app.key_ids()} == {new_key_id}
    assert made.get(body["id"])["rotation"]["pendingRemovalKeyIds"] == []
    assert body["id"] not in _cleanup_entries(broker)
    assert_validates(broker, body["id"])
    assert broker.run(reconcile_rotations()).get("cleaned_up") is None  # nothing left to do


def test_delete_removes_a_key_id_pending_removal(
    made: Connections, fake_azure: Any, broker: ServerHandle
) -> None:
    app = make_app(fake_azure)
    body = made.create(app)
    broker_key = app.broker_keys()[0].key_id.lower()
    fake_azure.inject("graph", "503", count=None, path_pattern="removePassword")
    new_key_id, _, response = _replace_secret(made, app, body["id"], fake_azure)
    assert response.json()["rotation"]["pendingRemovalKeyIds"] == [broker_key]

    # While Azure fails, the delete refuses rather than forget the pending Key ID.
    assert_problem(made.api.delete(f"{PREFIX}/{body['id']}"), 502)
    assert rotation_row(broker, body["id"]).pending_removals() == [broker_key]

    fake_azure.reset_faults()
    assert made.api.delete(f"{PREFIX}/{body['id']}").status_code == 204
    # The broker's secret is gone; the caller's own secret is theirs to keep.
    assert {k.lower() for k in app.key_ids()} == {new_key_id}
    assert rotation_row(broker, body["id"]) is None
    assert body["id"] not in _cleanup_entries(broker)
