"""Leases end to end: the broker as a server, Azurite tables, the Azure stand-in."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from core import azure_gateway, clock, records, tables
from core.durations import parse_duration
from core.errors import Unavailable
from leases import reconciler, revoking, service, sweeper
from leases import records as lease_rows
from leases.models import LeaseStatus
from leases.records import IndexEntry, LeaseClaim
from tests.harness import ServerHandle, assert_problem
from tests.test_leases_support import (
    EntraSetup,
    all_rows,
    create_dynamic_secrets,
    entra_setup,
    lease,
    lease_row,
)


@pytest.fixture
def setup(fake_azure: Any) -> EntraSetup:
    return entra_setup(fake_azure, users=2)


def sweep(broker: ServerHandle) -> dict[str, Any]:
    return broker.run(sweeper.sweep_expired_leases())


def reconcile(broker: ServerHandle) -> dict[str, Any]:
    return broker.run(reconciler.reconcile_leases())


def one_secret(api: httpx.Client, setup: EntraSetup, **overrides: Any) -> str:
    items = create_dynamic_secrets(api, setup, users=[setup.users[0].id], **overrides)
    return str(items[0]["name"])


def index_keys(broker: ServerHandle, lease_id: str) -> list[str]:
    shard = lease_rows.shard_of(lease_id)
    rows = broker.run(tables.partition(IndexEntry.TABLE, shard))
    return sorted(row.rk.split("_", 1)[0] for row in rows if row.data.get("leaseId") == lease_id)


def test_happy_path_for_two_users(api: httpx.Client, setup: EntraSetup) -> None:
    first, second = setup.users
    # one user named by object id, the other by user principal name
    items = create_dynamic_secrets(api, setup, users=[first.id, second.user_principal_name])
    names = [item["name"] for item in items]
    assert names == [f"{setup.prefix}-user1", f"{setup.prefix}-user2"]
    assert [item["userId"] for item in items] == [first.id, second.id]
    assert all("clientSecret" not in item for item in items)

    created = [lease(api, name) for name in names]
    for body, user in zip(created, setup.users, strict=True):
        assert body["lease"]["status"] == "active"
        assert body["lease"]["userPrincipalName"] == user.user_principal_name
        assert body["credentials"]["userPrincipalName"] == user.user_principal_name
        password = body["credentials"]["password"]
        assert setup.signs_in(user.user_principal_name, password)
        assert not setup.signs_in(user.user_principal_name, setup.passwords[user.user_principal_name])

    listed = api.get(f"/api/v1/dynamic-secrets/{names[0]}/leases").json()["items"]
    assert [item["id"] for item in listed] == [created[0]["lease"]["id"]]
    assert listed[0]["expiresAt"] == created[0]["lease"]["expiresAt"]

    lease_id = created[0]["lease"]["id"]
    revoked = api.delete(f"/api/v1/leases/{lease_id}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert not setup.signs_in(first.user_principal_name, created[0]["credentials"]["password"])
    assert setup.signs_in(second.user_principal_name, created[1]["credentials"]["password"])
    assert api.get(f"/api/v1/leases/{lease_id}").json()["status"] == "revoked"
    # revoking again is harmless and does not call Azure
    changes = setup.password_changes(first.id)
    assert api.delete(f"/api/v1/leases/{lease_id}").json()["status"] == "revoked"
    assert setup.password_changes(first.id) == changes


def test_a_second_lease_for_the_user_is_a_409_naming_the_first(api: httpx.Client, setup: EntraSetup) -> None:
    name = one_secret(api, setup)
    first = lease(api, name)["lease"]["id"]
    changes = setup.password_changes(setup.users[0].id)
    second = api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={})
    body = assert_problem(second, 409)
    assert first in body["detail"]
    assert body["activeLeaseId"] == first
    assert setup.password_changes(setup.users[0].id) == changes  # Azure was not called
    api.delete(f"/api/v1/leases/{first}")
    assert lease(api, name)["lease"]["id"] != first  # after revoking, a new lease is fine


def test_renew_is_capped_at_created_plus_max_ttl(api: httpx.Client, setup: EntraSetup) -> None:
    name = one_secret(api, setup, defaultTtl="1h", maxTtl="2h")
    created = lease(api, name)["lease"]
    assert datetime.fromisoformat(created["maxExpiresAt"]) - datetime.fromisoformat(
        created["createdAt"]
    ) == timedelta(hours=2)
    clock.advance(timedelta(minutes=30))
    asked = clock.now().replace(microsecond=0)
    renewed = api.post(f"/api/v1/leases/{created['id']}/renew", json={"ttl": "1h"})
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert body["capped"] is False
    expires = datetime.fromisoformat(body["lease"]["expiresAt"])  # now + 1 h, whole seconds shown
    assert asked + timedelta(hours=1) <= expires <= clock.now() + timedelta(hours=1)

    clock.advance(timedelta(minutes=50))
    renewed = api.post(f"/api/v1/leases/{created['id']}/renew", json={"ttl": "1h"})
    body = renewed.json()
    assert body["capped"] is True
    assert body["lease"]["expiresAt"] == created["maxExpiresAt"] == body["maxExpiresAt"]
    assert datetime.fromisoformat(body["requestedExpiresAt"]) > datetime.fromisoformat(body["maxExpiresAt"])
    # without a ttl, a renewal asks for the default TTL (and is capped just the same)
    assert api.post(f"/api/v1/leases/{created['id']}/renew").json()["capped"] is True

    clock.advance(timedelta(minutes=41))  # past the cap: the lease has expired
    assert_problem(api.post(f"/api/v1/leases/{created['id']}/renew", json={"ttl": "1h"}), 409)


@pytest.mark.parametrize("ttl", ["90s", "15m", "1h", "1h30m", "2h"])
def test_good_lease_ttls(api: httpx.Client, fake_azure: Any, ttl: str) -> None:
    setup = entra_setup(fake_azure, users=1)
    name = one_secret(api, setup, defaultTtl="1h", maxTtl="2h")
    body = lease(api, name, ttl)["lease"]
    took = datetime.fromisoformat(body["expiresAt"]) - datetime.fromisoformat(body["createdAt"])
    assert took == parse_duration(ttl)


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("1x", "duration"),
        ("h1", "duration"),
        ("30m1h", "largest first"),
        ("0s", "longer than zero"),
        ("30s", "at least 1m"),
        ("3h", "at most 2h"),
        ("", "at least 2 characters"),
    ],
)
def test_bad_lease_ttls_are_422_naming_ttl(
    api: httpx.Client, setup: EntraSetup, ttl: str, message: str
) -> None:
    name = one_secret(api, setup, defaultTtl="1h", maxTtl="2h")
    body = assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={"ttl": ttl}), 422, "ttl")
    assert message in body["errors"][0]["message"]
    assert setup.password_changes(setup.users[0].id) == 0


def test_a_bad_renew_ttl_is_422(api: httpx.Client, setup: EntraSetup) -> None:
    name = one_secret(api, setup)
    lease_id = lease(api, name)["lease"]["id"]
    assert_problem(api.post(f"/api/v1/leases/{lease_id}/renew", json={"ttl": "soon"}), 422, "ttl")
    assert_problem(api.post(f"/api/v1/leases/{lease_id}/renew", json={"ttl": "1h", "x": 1}), 422, "x")


def test_unknown_leases_and_secrets_are_404(api: httpx.Client) -> None:
    for path in (
        "/api/v1/leases/nope",
        "/api/v1/leases/some-name.0123456789abcdef0123456789abcdef",
        "/api/v1/dynamic-secrets/no-such-secret",
        "/api/v1/dynamic-secrets/BAD%2Fname",
        "/api/v1/dynamic-secrets/no-such-secret/leases",
    ):
        assert_problem(api.get(path), 404)
    assert_problem(api.delete("/api/v1/leases/nope"), 404)
    assert_problem(api.post("/api/v1/leases/nope/renew", json={"ttl": "1h"}), 404)
    assert_problem(api.post("/api/v1/dynamic-secrets/no-such-secret/leases", json={}), 404)


def test_roles(api: httpx.Client, setup: EntraSetup, as_role: Any) -> None:
    name = one_secret(api, setup)
    reader, operator = as_role("Broker.Reader"), as_role("Broker.Operator")
    assert_problem(reader.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 403)
    created = operator.post(f"/api/v1/dynamic-secrets/{name}/leases", json={})
    assert created.status_code == 201, created.text
    lease_id = created.json()["lease"]["id"]
    assert reader.get(f"/api/v1/leases/{lease_id}").status_code == 200
    assert reader.get(f"/api/v1/dynamic-secrets/{name}/leases").status_code == 200
    assert_problem(reader.post(f"/api/v1/leases/{lease_id}/renew", json={}), 403)
    assert_problem(reader.delete(f"/api/v1/leases/{lease_id}"), 403)
    assert_problem(operator.delete(f"/api/v1/leases/{lease_id}?force=true"), 403)
    assert_problem(operator.post("/api/v1/dynamic-secrets", json=setup.body()), 403)
    assert operator.post(f"/api/v1/leases/{lease_id}/renew", json={"ttl": "2h"}).status_code == 200
    assert operator.delete(f"/api/v1/leases/{lease_id}").json()["status"] == "revoked"


# ---------------------------------------------------------------------------- the sweeper


def test_two_sweepers_revoke_an_expired_lease_once(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    created = lease(api, name, "1m")
    lease_id, password = created["lease"]["id"], created["credentials"]["password"]
    user = setup.users[0]
    assert setup.password_changes(user.id) == 1
    sweep(broker)  # not due yet: untouched
    assert lease_row(broker, lease_id)["status"] == "active"
    assert setup.password_changes(user.id) == 1
    assert setup.signs_in(user.user_principal_name, password)

    clock.advance(timedelta(minutes=2))

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(sweeper.sweep_expired_leases(), sweeper.sweep_expired_leases()))

    first, second = broker.run(both())
    assert first.get("revoked", 0) + second.get("revoked", 0) >= 1
    assert setup.password_changes(user.id) == 2  # set once by the lease, once by one revocation
    row = lease_row(broker, lease_id)
    assert row["status"] == "revoked"
    assert row["revokedBy"] == "sweeper"
    assert not setup.signs_in(user.user_principal_name, password)
    assert index_keys(broker, lease_id) == ["purge"]
    sweep(broker)  # nothing left to do for it
    assert setup.password_changes(user.id) == 2
    audit = api.get("/api/v1/audit-logs", params={"resourceId": lease_id, "action": "lease.revoke"}).json()
    assert len(audit["items"]) == 1
    assert audit["items"][0]["actorId"] == "system"


def test_a_dead_sweepers_claim_is_taken_over_after_it_expires(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    lease_id = lease(api, name, "1m")["lease"]["id"]
    clock.advance(timedelta(minutes=2))
    row = broker.run(lease_rows.get_lease(lease_id))
    assert row is not None
    broker.run(revoking.claim(row, "sweeper-that-died"))  # claimed, then the process died
    assert sweep(broker).get("revoked", 0) == 0
    assert lease_row(broker, lease_id)["status"] == "revoking"
    clock.advance(service.CLAIM_FOR + timedelta(seconds=1))
    assert sweep(broker).get("revoked", 0) == 0  # its last call may still land until claim + longest call
    assert lease_row(broker, lease_id)["status"] == "revoking"
    clock.advance(timedelta(seconds=azure_gateway.MAX_CALL_SECONDS))
    sweep(broker)
    assert lease_row(broker, lease_id)["status"] == "revoked"
    assert setup.password_changes(setup.users[0].id) == 2


@pytest.mark.slow
def test_a_429_storm_during_a_sweep_loses_nothing(
    api: httpx.Client, fake_azure: Any, broker: ServerHandle
) -> None:
    setup = entra_setup(fake_azure, users=4)
    items = create_dynamic_secrets(api, setup)
    created = [lease(api, item["name"], "1m") for item in items]
    ids = [c["lease"]["id"] for c in created]
    clock.advance(timedelta(minutes=2))
    fake_azure.inject("graph", "429", count=None, path_pattern=r"/users/", method="PATCH", retry_after=1)
    storm = sweep(broker)
    assert storm.get("failed", 0) >= len(ids)
    for lease_id in ids:
        row = lease_row(broker, lease_id)
        assert row["status"] == "revoke_failed"
        assert "TooManyRequests" in row["lastError"]
        assert row["attempts"] == 1
        assert datetime.fromisoformat(row["nextAttemptAt"]) > clock.now()
        assert index_keys(broker, lease_id) == ["due"]  # kept (moved to the retry time)
    # a renewal of a lease being retried is refused; its user has no way to a second lease
    assert_problem(api.post(f"/api/v1/leases/{ids[0]}/renew", json={"ttl": "1h"}), 409)
    assert_problem(api.post(f"/api/v1/dynamic-secrets/{items[0]['name']}/leases", json={}), 409)

    fake_azure.reset_faults()  # the throttle lifts
    assert sweep(broker).get("revoked", 0) == 0  # not before the backoff
    clock.advance(service.backoff(1) + timedelta(seconds=1))
    sweep(broker)
    for lease_id, body, user in zip(ids, created, setup.users, strict=True):
        row = lease_row(broker, lease_id)
        assert row["status"] == "revoked", row
        assert not setup.signs_in(user.user_principal_name, body["credentials"]["password"])
        assert setup.password_changes(user.id) == 2
        assert index_keys(broker, lease_id) == ["purge"]


def test_a_short_throttle_is_ridden_out_within_the_sweep(
    api: httpx.Client, fake_azure: Any, setup: EntraSetup, broker: ServerHandle
) -> None:
    items = create_dynamic_secrets(api, setup)
    ids = [lease(api, item["name"], "1m")["lease"]["id"] for item in items]
    clock.advance(timedelta(minutes=2))
    fake_azure.inject("graph", "429", count=2, path_pattern=r"/users/", method="PATCH", retry_after=1)
    sweep(broker)
    assert [lease_row(broker, i)["status"] for i in ids] == ["revoked", "revoked"]


def test_a_renewed_lease_is_not_swept_at_its_old_expiry(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    lease_id = lease(api, name, "10m")["lease"]["id"]
    api.post(f"/api/v1/leases/{lease_id}/renew", json={"ttl": "1h"}).raise_for_status()
    # a crash between writing the new due entry and deleting the old one leaves both: recreate that
    key = lease_rows.index_key("due", clock.now(), lease_id)
    shard = lease_rows.shard_of(lease_id)
    entry = IndexEntry(shard=shard, key=key, lease_id=lease_id, created_at=clock.now())
    broker.run(records.upsert(entry))
    clock.advance(timedelta(minutes=11))
    sweep(broker)
    assert lease_row(broker, lease_id)["status"] == "active"
    assert index_keys(broker, lease_id) == ["due"]  # the stale entry was removed
    clock.advance(timedelta(hours=1))
    sweep(broker)
    assert lease_row(broker, lease_id)["status"] == "revoked"


# ---------------------------------------------------------------------------- failures and force


def test_a_revoke_azure_refuses_is_kept_then_force_forgotten(
    api: httpx.Client, fake_azure: Any, setup: EntraSetup, broker: ServerHandle, as_role: Any
) -> None:
    name = one_secret(api, setup)
    lease_id = lease(api, name)["lease"]["id"]
    fake_azure.remove_directory_role(setup.app, "User Administrator")
    refused = api.delete(f"/api/v1/leases/{lease_id}")
    body = assert_problem(refused, 502)
    assert body["step"] == "setPassword"
    assert body["azureCode"] == "Authorization_RequestDenied"
    assert body["leaseStatus"] == "revoke_failed"
    row = lease_row(broker, lease_id)
    assert row["status"] == "revoke_failed"
    assert "Authorization_RequestDenied" in row["lastError"]

    forgotten = api.delete(f"/api/v1/leases/{lease_id}", params={"force": "true"})
    assert forgotten.status_code == 200, forgotten.text
    assert forgotten.json()["status"] == "forgotten"
    entries = api.get("/api/v1/audit-logs", params={"resourceId": lease_id, "action": "lease.force_forget"})
    assert "may still work" in entries.json()["items"][0]["detail"]
    # the user can be leased again once the app has its role back
    fake_azure.assign_directory_role(setup.app, "User Administrator")
    assert lease(api, name)["lease"]["status"] == "active"


def test_force_revokes_normally_when_azure_agrees(api: httpx.Client, setup: EntraSetup) -> None:
    name = one_secret(api, setup)
    created = lease(api, name)
    body = api.delete(f"/api/v1/leases/{created['lease']['id']}", params={"force": "true"}).json()
    assert body["status"] == "revoked"
    assert not setup.signs_in(setup.users[0].user_principal_name, created["credentials"]["password"])


def test_a_definite_graph_refusal_at_create_leaves_nothing(
    api: httpx.Client, fake_azure: Any, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    fake_azure.remove_directory_role(setup.app, "User Administrator")
    body = assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 502)
    assert body["azureCode"] == "Authorization_RequestDenied"
    assert "leaseId" not in body
    assert api.get(f"/api/v1/dynamic-secrets/{name}/leases").json()["items"] == []
    fake_azure.assign_directory_role(setup.app, "User Administrator")
    assert lease(api, name)["lease"]["status"] == "active"  # the claim was released


def test_an_unknown_outcome_at_create_is_reset_by_the_sweeper(
    api: httpx.Client, fake_azure: Any, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    user = setup.users[0]
    # Every attempt the gateway makes answers 500 (a retried idempotent PATCH would succeed).
    attempts = azure_gateway.MAX_ATTEMPTS
    fake_azure.inject("graph", "500", count=attempts, path_pattern=r"/users/", method="PATCH")
    body = assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 503)
    assert body["leaseStatus"] == "revoke_failed"
    lease_id = body["leaseId"]
    assert lease_row(broker, lease_id)["lastError"].startswith("creation:")
    assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 409)
    sweep(broker)  # due at once: reset the password whatever Graph did
    assert lease_row(broker, lease_id)["status"] == "revoked"
    assert setup.password_changes(user.id) == 1
    assert lease(api, name)["lease"]["status"] == "active"


@pytest.mark.slow
def test_a_graph_timeout_on_revoke_is_retried_by_the_sweeper(
    api: httpx.Client, fake_azure: Any, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    created = lease(api, name)
    lease_id = created["lease"]["id"]
    fake_azure.inject("graph", "timeout", count=4, path_pattern=r"/users/", method="PATCH", seconds=0.2)
    body = assert_problem(api.delete(f"/api/v1/leases/{lease_id}"), 504)
    assert body["step"] == "setPassword"
    assert body["leaseStatus"] == "revoke_failed"
    clock.advance(service.backoff(1) + timedelta(seconds=1))
    sweep(broker)
    assert lease_row(broker, lease_id)["status"] == "revoked"
    assert not setup.signs_in(setup.users[0].user_principal_name, created["credentials"]["password"])


# ---------------------------------------------------------------------------- crashes and the reconciler


def test_crash_between_intent_and_graph_call(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    from core.audit import SYSTEM

    name = one_secret(api, setup)
    user = setup.users[0]
    pending = broker.run(service.begin_lease(name, None, SYSTEM))  # ... and the process dies here
    lease_id = pending.lease.id
    assert index_keys(broker, lease_id) == ["due", "intent"]
    assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 409)
    assert reconcile(broker).get("fixed", 0) == 0  # too recent to be a crash
    clock.advance(service.RECONCILE_AFTER + timedelta(seconds=1))
    result = reconcile(broker)
    assert result.get("fixed", 0) >= 1
    row = lease_row(broker, lease_id)
    assert row["status"] == "revoked"
    assert row["revokedBy"] == "reconciler"
    assert index_keys(broker, lease_id) == ["purge"]
    # Azure never saw the first password; the reconciler set an unknown one to be sure
    assert not setup.signs_in(user.user_principal_name, setup.passwords[user.user_principal_name])
    assert lease(api, name)["lease"]["status"] == "active"


def test_crash_between_graph_call_and_lease_record(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    from core.audit import SYSTEM

    caplog.set_level(logging.INFO)
    name = one_secret(api, setup)
    user = setup.users[0]
    pending = broker.run(service.begin_lease(name, None, SYSTEM))
    password = broker.run(service.set_lease_password(pending))  # set in Azure; then the process dies
    assert setup.signs_in(user.user_principal_name, password)
    clock.advance(service.RECONCILE_AFTER + timedelta(seconds=1))
    reconcile(broker)
    assert not setup.signs_in(user.user_principal_name, password)  # nobody holds a working password
    assert lease_row(broker, pending.lease.id)["status"] == "revoked"
    assert '"event":"reconcile.fixed"' in caplog.text
    # the create resuming late cannot hand out the password any more
    with pytest.raises(Unavailable):
        broker.run(service.activate_lease(pending, SYSTEM))
    assert lease_row(broker, pending.lease.id)["status"] == "revoked"


def test_crash_after_claim_before_intent_frees_the_user_later(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    name = one_secret(api, setup)
    claim = LeaseClaim(name=name, lease_id=lease_rows.new_lease_id(name), claimed_at=clock.now())
    broker.run(records.insert(claim))  # claimed, then the process died
    assert_problem(api.post(f"/api/v1/dynamic-secrets/{name}/leases", json={}), 409)
    clock.advance(service.RECONCILE_AFTER + timedelta(seconds=1))
    assert lease(api, name)["lease"]["status"] == "active"


def test_crash_after_activation_leaves_only_an_intent_to_clear(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    from core.audit import SYSTEM

    name = one_secret(api, setup)
    pending = broker.run(service.begin_lease(name, None, SYSTEM))
    broker.run(service.set_lease_password(pending))
    row = broker.run(records.replace(pending.lease.model_copy(update={"status": LeaseStatus.ACTIVE})))
    clock.advance(service.RECONCILE_AFTER + timedelta(seconds=1))
    reconcile(broker)
    assert lease_row(broker, row.id)["status"] == "active"
    assert index_keys(broker, row.id) == ["due"]
    assert broker.run(records.get(IndexEntry, pending.intent.shard, pending.intent.key)) is None


def test_a_late_create_cannot_race_the_reconciler(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    """Create and reconciler run at once on a stale intent: exactly one of them wins the lease."""
    from core.audit import SYSTEM

    name = one_secret(api, setup)
    pending = broker.run(service.begin_lease(name, None, SYSTEM))
    password = broker.run(service.set_lease_password(pending))
    clock.advance(service.RECONCILE_AFTER + timedelta(seconds=1))

    async def race() -> tuple[Any, Any]:
        results = await asyncio.gather(
            service.activate_lease(pending, SYSTEM), reconciler.reconcile_leases(), return_exceptions=True
        )
        return results[0], results[1]

    activated, _ = broker.run(race())
    status = lease_row(broker, pending.lease.id)["status"]
    works = setup.signs_in(setup.users[0].user_principal_name, password)
    if isinstance(activated, Exception):
        assert status == "revoked"
        assert not works
    else:
        assert status == "active"
        assert works


# ---------------------------------------------------------------------------- retention


def test_revoked_leases_are_purged_after_retention(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    from core.settings import get_settings

    name = one_secret(api, setup)
    lease_id = lease(api, name)["lease"]["id"]
    api.delete(f"/api/v1/leases/{lease_id}")
    broker.run(reconciler.purge_old_leases())
    assert api.get(f"/api/v1/leases/{lease_id}").status_code == 200
    clock.advance(timedelta(days=get_settings().lease_retention_days, seconds=1))
    assert broker.run(reconciler.purge_old_leases()).get("purged", 0) >= 1
    assert_problem(api.get(f"/api/v1/leases/{lease_id}"), 404)
    assert index_keys(broker, lease_id) == []


# ---------------------------------------------------------------------------- no secret leaks


def test_no_password_in_responses_tables_or_logs(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_leases_support import LEASE_TABLES

    caplog.set_level(logging.DEBUG)
    items = create_dynamic_secrets(api, setup)
    name = items[0]["name"]
    created = lease(api, name)
    password = created["credentials"]["password"]
    lease_id = created["lease"]["id"]
    assert created["lease"]["status"] == "active"
    texts = [
        api.get(f"/api/v1/leases/{lease_id}").text,
        api.get(f"/api/v1/dynamic-secrets/{name}/leases").text,
        api.get(f"/api/v1/dynamic-secrets/{name}").text,
        api.get("/api/v1/dynamic-secrets").text,
        api.post(f"/api/v1/leases/{lease_id}/renew", json={"ttl": "2h"}).text,
        api.patch(f"/api/v1/dynamic-secrets/{name}", json={"defaultTtl": "30m"}).text,
        api.delete(f"/api/v1/leases/{lease_id}").text,
        api.get("/api/v1/audit-logs").text,
    ]
    clock.advance(timedelta(hours=3))
    sweep(broker)
    rows = [str(row.data) for table in (*LEASE_TABLES, "AuditLog") for row in all_rows(broker, table)]
    for secret in (password, setup.secret):
        for text in (*texts, *rows, caplog.text):
            assert secret not in text
    assert '"event":"lease.created"' in caplog.text
    assert '"event":"lease.revoked"' in caplog.text


def test_a_lease_whose_claim_row_vanished_is_still_revoked(
    api: httpx.Client, setup: EntraSetup, broker: ServerHandle
) -> None:
    """Someone deleted the claim row by hand: the one-transaction finish falls back to two writes."""
    name = one_secret(api, setup)
    created = lease(api, name)
    broker.run(tables.delete(LeaseClaim.TABLE, name, lease_rows.ACTIVE))
    revoked = api.delete(f"/api/v1/leases/{created['lease']['id']}")
    assert revoked.json()["status"] == "revoked", revoked.text
    assert index_keys(broker, created["lease"]["id"]) == ["purge"]
    assert not setup.signs_in(setup.users[0].user_principal_name, created["credentials"]["password"])
