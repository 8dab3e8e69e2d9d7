"""The credential inventory against the stand-in: the timer scans each Client Secrets connection's
tenant through Graph (every page), keeps what expires within EXPIRY_WARNING_DAYS or has expired,
and GET /api/v1/credential-inventory lists it with its filters and pages."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from core import clock
from inventory import graph, scan
from tests.conn_support import assert_no_secret, client_secret_body, new_app, table_rows, unique
from tests.harness import ServerHandle, assert_problem
from tests.rotation_helpers import PREFIX, Connections, make_app

INVENTORY = "/api/v1/credential-inventory"
TABLES = ("CredentialInventory", "InventoryScans")
READ_ALL = ["Application.Read.All"]


def run_inventory(broker: ServerHandle) -> dict[str, Any]:
    from inventory.timer import scan_inventory

    return broker.run(scan_inventory())


def later(minutes: float = 6) -> None:
    """Past FRESH_FOR: the next run scans again."""
    clock.advance(timedelta(minutes=minutes))


def read_all(api: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item across pages, and how many pages it took."""
    items: list[dict[str, Any]] = []
    pages = 0
    token: str | None = None
    while True:
        query = {**params, **({"continuationToken": token} if token else {})}
        response = api.get(INVENTORY, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        pages += 1
        token = body["continuationToken"]
        if token is None:
            return items, pages


def scan_of(api: httpx.Client, connection_id: str) -> dict[str, Any]:
    body = api.get(INVENTORY, params={"connectionId": connection_id, "limit": 1}).json()
    (found,) = body["scans"]
    assert found["connectionId"] == connection_id
    result: dict[str, Any] = found
    return result


def expiring_events(caplog: pytest.LogCaptureFixture, connection_id: str) -> list[dict[str, Any]]:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("BROKER_EVENT ")]
    found = [json.loads(line.removeprefix("BROKER_EVENT ")) for line in lines]
    return [e for e in found if e["event"] == "credential.expiring" and e["connectionId"] == connection_id]


@pytest.fixture
def made(api: httpx.Client) -> Iterator[Connections]:
    connections = Connections(api)
    yield connections
    connections.cleanup()


def connect(
    api: httpx.Client, made: Connections, fake: Any, tenant: Any, permissions: list[str]
) -> tuple[str, Any, str]:
    """A Client Secrets connection for a new app of `tenant`: (connection id, the app, its secret)."""
    app, _, secret = new_app(fake, tenant, permissions)
    response = api.post(PREFIX, json=client_secret_body(unique("inv"), tenant, app, secret))
    assert response.status_code == 201, response.text
    made.ids.append(response.json()["id"])
    return response.json()["id"], app, secret


@pytest.mark.slow
def test_250_apps_list_exactly_the_expiring_credentials_across_pages(
    api: httpx.Client,
    broker: ServerHandle,
    fake_azure: Any,
    made: Connections,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    tenant = fake_azure.add_tenant()

    def password_ends(i: int) -> list[datetime]:
        return [now + timedelta(days=d) for d in ((5,), (20,), (60,), (-3,), (5, 60), ())[i % 6]]

    def certificate_ends(i: int) -> list[datetime]:  # few: each is a real self-signed certificate
        return [now + timedelta(days=d) for d in ((10,), (90,), (-1,))[i % 25]] if i % 25 < 3 else []

    apps = fake_azure.add_applications(
        tenant, 250, password_ends=password_ends, certificate_ends=certificate_ends
    )
    connection_id, _, secret = connect(api, made, fake_azure, tenant, READ_ALL)
    cutoff = now + timedelta(days=30)
    expected: dict[str, tuple[str, str, bool]] = {}
    for app in apps:
        for password in app.password_credentials:
            if password.end <= cutoff:
                expected[password.key_id.lower()] = (app.app_id, "password", password.end <= now)
        for certificate in app.key_credentials:
            if certificate.end <= cutoff:
                expected[certificate.key_id.lower()] = (app.app_id, "certificate", certificate.end <= now)
    assert len(expected) > 150

    fake_azure.reset_counters()
    summary = run_inventory(broker)
    assert summary.get("ok", 0) >= 1
    # One Graph page per 999 apps: 251 apps are one GET /applications.
    assert scan_of(api, connection_id)["applications"] == 251
    items, pages = read_all(api, connectionId=connection_id, limit=40)
    assert pages == (len(expected) + 39) // 40
    assert {i["keyId"]: (i["appId"], i["type"], i["expired"]) for i in items} == expected
    assert len(items) == len(expected)  # no repeats across pages
    sample = next(i for i in items if i["type"] == "certificate")
    assert sample["tenantId"] == tenant.id
    assert sample["appObjectId"]
    assert sample["appDisplayName"].startswith("inventory-app-")
    assert sample["managedBy"] is None
    assert sample["endDateTime"].endswith("Z")

    # Filters: within, managed, connection.
    soon, _ = read_all(api, connectionId=connection_id, within="7d", limit=1000)
    assert {i["keyId"] for i in soon} == {k for k, v in expected.items() if k in _ending_within(apps, now, 7)}
    assert read_all(api, connectionId=connection_id, managed="true")[0] == []
    assert len(read_all(api, connectionId=connection_id, managed="false", limit=1000)[0]) == len(expected)

    # Every page is followed: with 100 apps a page, the 251 apps take three Graph requests.
    monkeypatch.setattr(graph, "PAGE_SIZE", 100)
    later()
    fake_azure.reset_counters()
    run_inventory(broker)
    record = broker.run(_scan_record(connection_id))
    assert (record.pages, record.applications) == (3, 251)

    # A renewed credential (removed, a new one ending in a year) leaves the inventory.
    renewed = next(a for a in apps if a.password_credentials and a.password_credentials[0].end <= cutoff)
    gone = renewed.password_credentials[0].key_id.lower()
    with fake_azure.state.lock:
        renewed.password_credentials.pop(0)
    fake_azure.add_password(renewed, display_name="renewed", end=now + timedelta(days=365))
    later(12)
    run_inventory(broker)
    after, _ = read_all(api, connectionId=connection_id, limit=1000)
    assert {i["keyId"] for i in after} == set(expected) - {gone}

    rows = table_rows(broker, TABLES)
    assert_no_secret([secret], rows, api.get(INVENTORY, params={"connectionId": connection_id}))
    assert not [r for r in rows if {"hint", "key", "customKeyIdentifier"} & set(r)]


def _ending_within(apps: list[Any], now: datetime, days: int) -> set[str]:
    cutoff = now + timedelta(days=days)
    return {
        c.key_id.lower()
        for a in apps
        for c in [*a.password_credentials, *a.key_credentials]
        if c.end <= cutoff
    }


async def _scan_record(connection_id: str) -> Any:
    from core import records
    from inventory.models import SCAN_PK, ScanRecord

    return await records.get(ScanRecord, SCAN_PK, connection_id)


def test_managed_by_names_the_connection_rotation_key(
    api: httpx.Client, broker: ServerHandle, fake_azure: Any, made: Connections
) -> None:
    rotating = make_app(fake_azure, permissions=("Application.ReadWrite.OwnedBy", "Application.Read.All"))
    # Every 7 days: the broker's secret ends at the next rotation + 14 days, inside the 30-day window.
    connection = made.create(rotating, intervalDays=7)
    key_id = connection["rotation"]["clientSecretKeyId"].lower()
    assert key_id != rotating.original_key_id.lower()  # the first rotation ran at create
    other = fake_azure.add_application(rotating.tenant, unique("plain"))
    unmanaged, _ = fake_azure.add_password(
        other, display_name="by hand", end=datetime.now(UTC) + timedelta(days=9)
    )

    run_inventory(broker)
    items, _ = read_all(api, connectionId=connection["id"])
    by_key = {i["keyId"]: i["managedBy"] for i in items}
    assert by_key[key_id] == "connection-rotation"
    assert by_key[unmanaged.lower()] is None
    managed, _ = read_all(api, connectionId=connection["id"], managed="true")
    assert [i["keyId"] for i in managed] == [key_id]
    assert unmanaged.lower() in {
        i["keyId"] for i in read_all(api, connectionId=connection["id"], managed="false")[0]
    }


def test_a_connection_that_cannot_list_apps_is_reported_and_the_others_are_scanned(
    api: httpx.Client, broker: ServerHandle, fake_azure: Any, made: Connections
) -> None:
    refused_tenant, open_tenant = fake_azure.add_tenant(), fake_azure.add_tenant()
    refused_id, refused_app, _ = connect(api, made, fake_azure, refused_tenant, READ_ALL)
    open_id, _, _ = connect(api, made, fake_azure, open_tenant, READ_ALL)
    fake_azure.revoke_permissions(refused_app, READ_ALL)  # new tokens no longer carry it
    expiring = fake_azure.add_application(open_tenant, unique("expiring"))
    key_id, _ = fake_azure.add_password(
        expiring, display_name="soon", end=datetime.now(UTC) + timedelta(days=3)
    )

    run_inventory(broker)
    refused = scan_of(api, refused_id)
    assert refused["status"] == "denied"
    assert refused["missingPermission"] == "Application.Read.All"
    assert "Application.Read.All" in refused["error"]
    assert refused["lastScannedAt"]
    assert scan_of(api, open_id)["status"] == "ok"
    assert [i["keyId"] for i in read_all(api, connectionId=open_id)[0]] == [key_id.lower()]


def test_expiring_events_once_per_credential_per_day_and_two_runs_at_once_scan_once(
    api: httpx.Client,
    broker: ServerHandle,
    fake_azure: Any,
    made: Connections,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.events")
    # Start at the broker's next UTC noon, so the hourly runs below stay inside one UTC day whatever
    # the wall clock says (run at 22:50 UTC, "an hour later" would be the next day).
    now = clock.now()
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    clock.advance((noon if noon > now else noon + timedelta(days=1)) - now)
    tenant = fake_azure.add_tenant()
    connection_id, _, connection_secret = connect(api, made, fake_azure, tenant, READ_ALL)
    app = fake_azure.add_application(tenant, unique("expiring"))
    key_id, secret = fake_azure.add_password(
        app, display_name="soon", end=datetime.now(UTC) + timedelta(days=5)
    )
    expired_key, expired_secret = fake_azure.add_password(
        app, display_name="old", end=datetime.now(UTC) - timedelta(days=2)
    )

    async def twice() -> list[dict[str, Any]]:
        from inventory.timer import scan_inventory

        return list(await asyncio.gather(scan_inventory(), scan_inventory()))

    fake_azure.reset_counters()
    results = broker.run(twice())
    scanned = sum(r.get(outcome, 0) for r in results for outcome in ("ok", "denied", "failed"))
    assert sum(r.get("skipped", 0) for r in results) >= 1
    assert fake_azure.request_count("graph", r"/applications$", "GET") == scanned  # each tenant listed once
    events = expiring_events(caplog, connection_id)
    assert sorted(e["keyId"] for e in events) == sorted([key_id.lower(), expired_key.lower()])
    assert {e["keyId"]: e["expired"] for e in events} == {key_id.lower(): False, expired_key.lower(): True}
    assert all(
        e["tenantId"] == tenant.id and e["appId"] == app.app_id and "managedBy" not in e for e in events
    )

    later(61)  # the next hourly run: the same day, no new event
    run_inventory(broker)
    assert len(expiring_events(caplog, connection_id)) == 2
    clock.advance(timedelta(days=1))
    run_inventory(broker)
    assert len(expiring_events(caplog, connection_id)) == 4
    later(61)
    run_inventory(broker)
    assert len(expiring_events(caplog, connection_id)) == 4

    assert_no_secret(
        [secret, expired_secret, connection_secret],
        caplog.text,
        table_rows(broker, TABLES),
        api.get(INVENTORY, params={"connectionId": connection_id}),
    )

    # A deleted connection's rows go with it on the next run.
    assert api.delete(f"{PREFIX}/{connection_id}").status_code == 204
    later(61)
    run_inventory(broker)
    assert api.get(INVENTORY, params={"connectionId": connection_id}).json() == {
        "items": [],
        "scans": [],
        "continuationToken": None,
    }


def test_a_claim_held_by_another_instance_is_left_until_it_can_be_taken_over(
    api: httpx.Client, broker: ServerHandle, fake_azure: Any, made: Connections
) -> None:
    tenant = fake_azure.add_tenant()
    connection_id, _, _ = connect(api, made, fake_azure, tenant, READ_ALL)
    held = broker.run(scan.claim(connection_id, tenant.id))  # an instance that then died
    assert held is not None
    run_inventory(broker)
    assert scan_of(api, connection_id)["status"] == "pending"
    clock.advance(scan.CLAIM + timedelta(seconds=21))  # past claimUntil + the longest call
    run_inventory(broker)
    assert scan_of(api, connection_id)["status"] == "ok"


def test_bad_filters_are_422_naming_the_parameter(api: httpx.Client) -> None:
    for params, field in (
        ({"within": "soon"}, "within"),
        ({"within": "0d"}, "within"),
        ({"managed": "maybe"}, "managed"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"connectionId": "a#b"}, "connectionId"),
        ({"continuationToken": "not-a-token"}, "continuationToken"),
    ):
        assert_problem(api.get(INVENTORY, params=params), 422, field)


def test_the_inventory_is_for_readers(as_role: Any, anonymous: httpx.Client) -> None:
    assert anonymous.get(INVENTORY).status_code == 401
    assert as_role("Broker.Reader").get(INVENTORY).status_code == 200


def test_throttling_is_waited_out_and_a_failing_graph_is_recorded_not_fatal(
    api: httpx.Client, broker: ServerHandle, fake_azure: Any, made: Connections
) -> None:
    tenant = fake_azure.add_tenant()
    connection_id, app, _ = connect(api, made, fake_azure, tenant, READ_ALL)
    fake_azure.add_password(app, display_name="soon", end=datetime.now(UTC) + timedelta(days=2))
    fake_azure.inject("graph", "429", count=1, path_pattern=r"/applications$", retry_after=1)
    run_inventory(broker)
    assert scan_of(api, connection_id)["status"] == "ok"
    assert len(read_all(api, connectionId=connection_id)[0]) == 1

    later()
    fake_azure.inject("graph", "503", count=None, path_pattern=r"/applications$", retry_after=0)
    summary = run_inventory(broker)  # does not raise: each connection's failure is its own outcome
    assert summary["failed"] >= 1
    failed = scan_of(api, connection_id)
    assert failed["status"] == "failed"
    assert "503" in failed["error"]
    assert len(read_all(api, connectionId=connection_id)[0]) == 1  # the last known rows stay


def test_the_unmanaged_expiring_alert_reads_the_inventory_s_real_event_lines(
    api: httpx.Client,
    broker: ServerHandle,
    fake_azure: Any,
    made: Connections,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.kql import Evaluator, Table
    from tests.test_infra import alert_rules

    caplog.set_level(logging.INFO, logger="broker.events")
    tenant = fake_azure.add_tenant()
    connect(api, made, fake_azure, tenant, READ_ALL)
    app = fake_azure.add_application(tenant, unique("expiring"))
    for days in (3, 6, 20):  # two within the alert's 7 days, one only within the inventory's 30
        fake_azure.add_password(
            app, display_name=f"in {days} days", end=datetime.now(UTC) + timedelta(days=days)
        )
    run_inventory(broker)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("BROKER_EVENT ")]
    rows = [{"timestamp": datetime.now(UTC), "message": line} for line in lines]
    evaluator = Evaluator({"traces": Table(["timestamp", "message"], rows)}, now=datetime.now(UTC))
    result = evaluator.run(alert_rules()["expiringUnmanaged"]["query"])
    assert {"tenantId": tenant.id, "credentials": 2} in result.rows
    assert evaluator.missing <= {"managedBy"}  # absent is how "nothing manages it" is written
