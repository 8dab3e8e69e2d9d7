# ruff: noqa: F811 - the shared fixtures are imported and then named as test arguments
"""Secret rotations of target apps, end to end through HTTP against Azurite and the stand-in:
validation before any side effect, two overlapping broker secrets, crashes at each step, two timers,
a lost addPassword answer, a failing connection, delete, destinations, and no secret anywhere but
`current`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from core import clock
from tests.conn_support import assert_no_secret, table_rows
from tests.harness import ServerHandle
from tests.secret_rotation_support import (
    PREFIX,
    Setup,
    destination_hosts,  # noqa: F401 (fixture)
    run_reconciler,
    run_timer,
    setup,  # noqa: F401 (fixture)
)


class Crash(BaseException):
    """The worker dies here: no `except Exception` runs, nothing more is recorded."""


def _fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


def test_each_validation_error_names_the_field_and_changes_nothing(setup: Setup, fake_azure: Any) -> None:
    post = setup.api.post
    assert "connectionId" in _fields(post(PREFIX, json=setup.body(connectionId=str(uuid.uuid4()))))
    assert "applicationId" in _fields(post(PREFIX, json=setup.body(applicationId=str(uuid.uuid4()))))
    own = post(PREFIX, json=setup.body(applicationId=setup.rotated.app.app_id))
    assert "applicationId" in _fields(own)
    assert "rotation" in own.text
    lifetime = post(PREFIX, json=setup.body(intervalDays=30, secretLifetimeDays=30))
    assert _fields(lifetime) == ["secretLifetimeDays"]
    assert any("rotateAt" in f for f in _fields(post(PREFIX, json=setup.body(rotateAt="25:00"))))
    assert any("timeZone" in f for f in _fields(post(PREFIX, json=setup.body(timeZone="Mars/Olympus"))))
    # Not an owner, only Application.ReadWrite.OwnedBy: Graph says 403, the 422 names the permission.
    stranger = fake_azure.add_application(setup.rotated.tenant, f"other-{uuid.uuid4().hex[:6]}")
    refused = post(PREFIX, json=setup.body(applicationId=stranger.app_id))
    assert "connectionId" in _fields(refused)
    assert "Application.ReadWrite.OwnedBy" in refused.text
    vault = {"type": "key-vault", "vaultUrl": "https://vault.example.com", "secretName": "web"}
    assert _fields(post(PREFIX, json=setup.body(destinations=[vault]))) == ["destinations[0].vaultUrl"]
    assert setup.key_ids() == {setup.hand_key_id}  # nothing was added to the target
    assert setup.api.get(PREFIX).status_code == 200


def test_two_rotations_leave_two_broker_secrets_and_current_signs_in(
    setup: Setup, broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = setup.create()
    rid = created["id"]
    assert created["status"] == "scheduled", created
    first = created["currentKeyId"]
    assert setup.broker_keys(rid) == {first}
    assert created["nextRotationAt"]
    secrets = [setup.current(rid).json()["clientSecret"]]
    second = setup.rotate(rid)
    secrets.append(setup.current(rid).json()["clientSecret"])
    third = setup.rotate(rid)
    current = setup.current(rid)
    assert current.status_code == 200
    assert current.headers["cache-control"] == "no-store"
    secrets.append(current.json()["clientSecret"])
    assert current.json()["keyId"] == third["currentKeyId"]
    assert current.json()["clientId"] == setup.target.app_id
    assert third["previousKeyId"] == second["currentKeyId"]
    # Exactly two broker secrets (current and previous); the one made by hand is untouched.
    assert setup.broker_keys(rid) == {third["currentKeyId"], second["currentKeyId"]}
    assert setup.hand_key_id in setup.key_ids()
    assert len(setup.key_ids()) == 3
    matched = setup.fake.state.check_secret(setup.target, secrets[-1])
    assert matched is not None
    assert matched.key_id == third["currentKeyId"]
    assert setup.fake.state.check_secret(setup.target, secrets[0]) is None  # the oldest is gone
    # `current` is the only place the secret appears.
    listed = setup.api.get(PREFIX)
    read = setup.api.get(f"{PREFIX}/{rid}")
    audit = setup.api.get("/api/v1/audit-logs", params={"resourceId": rid})
    rows = table_rows(broker, ["SecretRotations", "RotationDue", "AuditLog"])
    assert_no_secret(secrets, listed, read, audit, rows, caplog.text)


@pytest.mark.parametrize("stop_at", ["planned", "added", "verified", "stored"])
def test_a_crash_at_each_step_is_finished_or_undone_by_the_reconciler(
    setup: Setup, broker: ServerHandle, stop_at: str
) -> None:
    from core.audit import SYSTEM
    from rotation import rotator, secret_records

    rid = setup.create()["id"]
    before = setup.get(rid)["currentKeyId"]

    async def until(step: str) -> Any:
        record = await secret_records.load(rid)
        assert record is not None
        record = await rotator.begin(record, SYSTEM, "manual", move_due=True)
        while record.step != step:
            record = await rotator.advance(record)
        return record

    broker.run(until(stop_at))
    assert setup.get(rid)["status"] == "rotating"
    assert run_reconciler(broker).get("fixed", 0) == 0  # the (dead) worker's claim still holds
    clock.advance(timedelta(minutes=6))
    assert run_reconciler(broker).get("fixed", 0) == 1
    after = setup.get(rid)
    assert after["status"] == "scheduled", after
    assert after["currentKeyId"] != before
    assert setup.broker_keys(rid) == {after["currentKeyId"], before}  # nothing untracked
    secret = setup.current(rid).json()["clientSecret"]
    assert setup.fake.state.check_secret(setup.target, secret) is not None


def test_a_crash_right_after_add_password_leaves_no_untracked_secret(
    setup: Setup, broker: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rotation import rotator

    rid = setup.create()["id"]
    before = setup.get(rid)["currentKeyId"]
    real = rotator._save_step

    async def dying(record: Any, step: str) -> Any:
        if step == "added":
            raise Crash(step)
        return await real(record, step)

    monkeypatch.setattr(rotator, "_save_step", dying)
    with pytest.raises(Crash):
        broker.run(_rotate_directly(rid))
    monkeypatch.setattr(rotator, "_save_step", real)
    assert len(setup.broker_keys(rid)) == 2  # the new one exists; the row does not know its Key ID
    clock.advance(timedelta(minutes=6))
    run_reconciler(broker)
    after = setup.get(rid)
    assert after["status"] == "scheduled", after
    assert setup.broker_keys(rid) == {after["currentKeyId"], before}


async def _rotate_directly(rotation_id: str) -> Any:
    from core.audit import SYSTEM
    from rotation import secret_records, secret_runs

    record = await secret_records.load(rotation_id)
    assert record is not None
    return await secret_runs.rotate(record, SYSTEM, trigger="manual")


def test_two_timers_at_once_rotate_once(setup: Setup, broker: ServerHandle) -> None:
    rid = setup.create()["id"]
    clock.advance(timedelta(days=31))

    async def both() -> list[dict[str, Any]]:
        from rotation.timer import rotate_due_secret_rotations

        return list(await asyncio.gather(rotate_due_secret_rotations(), rotate_due_secret_rotations()))

    summaries = broker.run(both())
    assert sum(s.get("rotated", 0) for s in summaries) == 1, summaries
    assert len(setup.broker_keys(rid)) == 2
    assert run_timer(broker).get("rotated", 0) == 0  # not due again


def test_a_lost_add_password_answer_is_adopted_not_duplicated(setup: Setup) -> None:
    rid = setup.create()["id"]
    before = setup.broker_keys(rid)
    setup.fake.inject("graph", "lost", path_pattern="addPassword")
    failed = setup.rotate(rid)
    assert failed["status"] == "failed", failed
    assert "lost" in failed["lastError"]
    assert setup.broker_keys(rid) == before  # the adopted one was removed; nothing sent twice
    retried = setup.rotate(rid)
    assert retried["status"] == "scheduled"
    assert len(setup.broker_keys(rid)) == 2


def test_the_connection_failing_is_recorded_and_the_target_keeps_its_secrets(
    setup: Setup, broker: ServerHandle
) -> None:
    from core import azure_credentials

    rid = setup.create()["id"]
    keys = setup.key_ids()
    # The connection's secret is revoked in Entra and its cached token is gone: sign-in fails.
    setup.fake.remove_password(setup.rotated.app, setup.rotated.original_key_id)
    app = setup.rotated
    broker.run(azure_credentials.drop(app.tenant.id, app.app.app_id, app.original_secret))
    failed = setup.rotate(rid)
    assert failed["status"] == "failed", failed
    assert "AADSTS" in failed["lastError"]
    assert setup.key_ids() == keys
    assert setup.current(rid).status_code == 200  # the previous secret stays current


def test_delete_removes_every_marked_secret_unless_keep_secrets(setup: Setup) -> None:
    gone = setup.create()["id"]
    setup.rotate(gone)
    # An untracked secret carrying this rotation's marker (e.g. from a lost answer) goes too.
    setup.fake.add_password(setup.target, display_name=f"azure-credential-broker secret-rotation {gone} x")
    assert len(setup.broker_keys(gone)) == 3
    assert setup.api.delete(f"{PREFIX}/{gone}").status_code == 204
    assert not setup.broker_keys(gone)
    assert setup.hand_key_id in setup.key_ids()
    assert setup.api.get(f"{PREFIX}/{gone}").status_code == 404
    kept = setup.create()["id"]
    assert setup.api.delete(f"{PREFIX}/{kept}", params={"keepSecrets": "true"}).status_code == 204
    assert len(setup.broker_keys(kept)) == 1


def test_if_match_and_roles(setup: Setup, as_role: Any) -> None:
    rid = setup.create()["id"]
    stale = setup.api.patch(f"{PREFIX}/{rid}", json={"name": "x"}, headers={"If-Match": 'W/"stale"'})
    assert stale.status_code == 412
    etag = setup.api.get(f"{PREFIX}/{rid}").headers["etag"]
    patched = setup.api.patch(f"{PREFIX}/{rid}", json={"intervalDays": 7}, headers={"If-Match": etag})
    assert patched.status_code == 200
    assert patched.json()["secretLifetimeDays"] >= 17
    reader = as_role("Broker.Reader")
    assert reader.get(f"{PREFIX}/{rid}").status_code == 200
    assert reader.get(f"{PREFIX}/{rid}/current").status_code == 403
    assert reader.post(f"{PREFIX}/{rid}/rotate").status_code == 403


@pytest.mark.usefixtures("destination_hosts")
def test_destinations_get_the_secret_before_it_is_current_and_hold_back_removal(setup: Setup) -> None:
    fake = setup.fake
    vault = fake.add_vault(f"apps-{uuid.uuid4().hex[:6]}", setup.rotated.tenant)
    fake.grant_vault(vault, setup.rotated.app, "Key Vault Secrets Officer")
    dest = {
        "type": "key-vault",
        "vaultUrl": fake.vault_url(vault.name),
        "secretName": "web-secret",
        "connectionId": setup.connection_id,
    }
    created = setup.create(destinations=[dest])
    rid = created["id"]
    [state] = created["destinations"]
    assert state["status"] == "synced"
    assert state["lastSyncedKeyId"] == created["currentKeyId"]
    first = created["currentKeyId"]
    second = setup.rotate(rid)
    # The vault stops accepting writes: the third rotation's secret cannot be delivered there.
    fake.revoke_vault(vault, setup.rotated.app)
    third = setup.rotate(rid)
    [state] = third["destinations"]
    assert state["status"] == "failed"
    assert state["lastSyncedKeyId"] == second["currentKeyId"]
    fourth = setup.rotate(rid)
    # The vault still holds the second secret: it stays on the app (waiting for delivery).
    assert fourth["status"] == "waiting-for-delivery", fourth
    assert second["currentKeyId"] in fourth["waitingForDeliveryKeyIds"]
    assert second["currentKeyId"] in setup.broker_keys(rid)
    assert first not in setup.broker_keys(rid)
    fake.grant_vault(vault, setup.rotated.app, "Key Vault Secrets Officer")
    synced = setup.api.post(f"{PREFIX}/{rid}/sync")
    assert synced.status_code == 200, synced.text
    assert synced.json()["status"] == "scheduled"
    assert synced.json()["destinations"][0]["status"] == "synced"
    assert setup.broker_keys(rid) == {fourth["currentKeyId"], fourth["previousKeyId"]}


@pytest.mark.usefixtures("destination_hosts")
def test_the_reconciler_repairs_a_drifted_destination(setup: Setup, broker: ServerHandle) -> None:
    from pydantic import SecretStr

    from rotation.destinations import KeyVaultDestination, SecretToDeliver
    from rotation.destinations import key_vault as kv
    from rotation.secret_engine import access_for

    fake = setup.fake
    vault = fake.add_vault(f"apps-{uuid.uuid4().hex[:6]}", setup.rotated.tenant)
    fake.grant_vault(vault, setup.rotated.app, "Key Vault Secrets Officer")
    dest = KeyVaultDestination(
        type="key-vault",
        vault_url=fake.vault_url(vault.name),
        secret_name="web-secret",
        connection_id=setup.connection_id,
    )
    created = setup.create(destinations=[dest.model_dump(mode="json", by_alias=True)])
    rid = created["id"]
    assert run_reconciler(broker).get("repaired", 0) == 0  # nothing drifted yet

    async def tamper() -> None:  # someone sets another value by hand
        other = SecretToDeliver(SecretStr("not-the-rotated-one"), "by-hand", setup.target.app_id, clock.now())
        await kv.deliver(dest, await access_for(dest), other)

    broker.run(tamper())
    summary = run_reconciler(broker)
    assert summary.get("repaired", 0) == 1, summary
    [state] = setup.get(rid)["destinations"]
    assert state["status"] == "synced"
    assert state["lastSyncedKeyId"] == created["currentKeyId"]


def test_the_inventory_names_a_secret_rotation_s_keys_as_managed(setup: Setup, broker: ServerHandle) -> None:
    from inventory.timer import scan_inventory

    # Every 7 days: lifetime 2 x 7 + 3 = 17 days, inside the inventory's 30-day window.
    created = setup.create(intervalDays=7)
    second = setup.rotate(created["id"])
    clock.advance(timedelta(minutes=6))  # past the inventory's freshness window: this run scans
    broker.run(scan_inventory())
    response = setup.api.get("/api/v1/credential-inventory", params={"connectionId": setup.connection_id})
    assert response.status_code == 200, response.text
    by_key = {item["keyId"].lower(): item["managedBy"] for item in response.json()["items"]}
    assert by_key[second["currentKeyId"].lower()] == "secret-rotation"
    assert by_key[second["previousKeyId"].lower()] == "secret-rotation"


@pytest.mark.usefixtures("destination_hosts")
def test_one_rotation_feeds_a_vault_an_app_configuration_reference_and_a_variable_group(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14's walk-through: every destination holds the current secret after two rotations, the
    group's other variables are intact, and the app holds exactly two broker secrets."""
    caplog.set_level(logging.DEBUG)
    fake, tag = setup.fake, uuid.uuid4().hex[:6]
    vault = fake.add_vault(f"apps-{tag}", setup.rotated.tenant)
    fake.grant_vault(vault, setup.rotated.app, "Key Vault Secrets Officer")
    store = fake.add_app_config_store(f"config-{tag}", setup.rotated.tenant)
    fake.grant_app_config(store, setup.rotated.app, "App Configuration Data Owner")
    org = fake.add_devops_org(f"org-{tag}", projects=["web"])
    fake.add_variable_group(org, "web", "web-secrets", {"Region": "westeurope"}, secrets={"Db": "db-secret"})
    pat = fake.add_pat(org, ["vso.project", "vso.variablegroups_manage"])
    devops = setup.api.post(
        "/api/v1/app-connections/azure-devops",
        json={
            "name": f"ado-{tag}",
            "method": "access-token",
            "credentials": {"accessToken": pat, "orgName": org.name},
        },
    )
    assert devops.status_code == 201, devops.text
    destinations = [
        {
            "type": "key-vault",
            "vaultUrl": fake.vault_url(vault.name),
            "secretName": "web-secret",
            "connectionId": setup.connection_id,
        },
        {
            "type": "app-configuration",
            "endpoint": fake.app_config_endpoint(store.name),
            "key": "Web:Secret",
            "connectionId": setup.connection_id,
            "keyVaultReference": True,
        },
        {
            "type": "devops-variable-group",
            "connectionId": devops.json()["id"],
            "project": "web",
            "variableGroup": "web-secrets",
            "variable": "ClientSecret",
            "clientIdVariable": "ClientId",
        },
    ]
    try:
        created = setup.create(destinations=destinations)
        rid = created["id"]
        setup.rotate(rid)
        final = setup.rotate(rid)
        assert [d["status"] for d in final["destinations"]] == ["synced"] * 3, final["destinations"]
        current = setup.current(rid).json()
        secret, key_id = current["clientSecret"], current["keyId"]

        held = fake.vault_secret(vault, "web-secret")
        assert held.value == secret
        reference = fake.app_config_value(store, "Web:Secret")
        assert reference.content_type.startswith("application/vnd.microsoft.appconfig.keyvaultref+json")
        assert f"/secrets/web-secret/{held.version}" in reference.value
        group = fake.variable_group(org, "web-secrets")
        assert (group.variables["ClientSecret"].value, group.variables["ClientSecret"].is_secret) == (
            secret,
            True,
        )
        assert group.variables["ClientId"].value == setup.target.app_id
        assert group.variables["Region"].value == "westeurope"
        assert (group.variables["Db"].value, group.variables["Db"].is_secret) == ("db-secret", True)

        assert setup.broker_keys(rid) == {key_id, final["previousKeyId"]}
        assert fake.state.check_secret(setup.target, secret) is not None
        assert_no_secret([secret], setup.api.get(f"{PREFIX}/{rid}"), caplog.text)
    finally:
        setup.api.delete(f"/api/v1/app-connections/azure-devops/{devops.json()['id']}")
