"""Events reach the Event Grid topic as CloudEvents 1.0, never carry a secret, and never hold up
or fail the operation that raised them.

The topic is the stand-in's (tests/azure_fake/eventgrid.py), reached by the real
azure-eventgrid publisher with the broker's own identity (a token for https://eventgrid.azure.net).
Rotation events come from real rotations through the API; the inventory's expiring-credential
event is raised directly (the inventory job is another module's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core import events
from core.settings import get_settings
from tests.harness import ServerHandle
from tests.rotation_helpers import Connections, connections, make_app  # noqa: F401 (fixture)

SECRET = "s3cr3t-VALUE-that-must-never-travel"  # a marker, not a credential


def _wait_for(
    read: Callable[[], list[dict[str, Any]]], done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = read()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def topic(
    fake_azure: Any, broker_env: dict[str, str], broker_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A topic the broker's identity may send to, set as EVENTS_TOPIC_ENDPOINT; yields its name."""
    name = f"broker-events-{uuid.uuid4().hex[:8]}"
    identity = fake_azure.state.find_service_principal(broker_env["AZURE_CLIENT_ID"], broker_tenant.id)
    endpoint = fake_azure.add_topic(name, senders=[identity.id])
    monkeypatch.setenv("EVENTS_TOPIC_ENDPOINT", endpoint)
    get_settings.cache_clear()
    yield name
    monkeypatch.delenv("EVENTS_TOPIC_ENDPOINT")
    get_settings.cache_clear()


def _emit_and_drain(*calls: tuple[str, dict[str, Any]]) -> bool:
    async def run() -> bool:
        for name, fields in calls:
            events.emit(name, **fields)
        return await events.drain(within=20)

    return asyncio.run(run())


def test_events_arrive_as_cloudevents_with_subject_and_data(fake_azure: Any, topic: str) -> None:
    expiring = {
        "tenantId": "t-1",
        "connectionId": "c-1",
        "appId": "a-1",
        "keyId": "k-1",
        "endDateTime": "2026-12-09T00:00:00Z",
        "managedBy": None,
        "credentialType": "password",
    }
    before = events.stats()
    assert _emit_and_drain(
        ("credential.expiring", expiring),
        ("lease.revoke_failed", {"leaseId": "ds.abc", "error": "Graph 404"}),
        ("secret_rotation.succeeded", {"secretRotationId": "r-1", "appId": "a-2", "keyId": "k-2"}),
        ("delivery.drifted", {"secretRotationId": "r-1", "destination": "key-vault:kv/app-secret"}),
        ("job.debug", {"note": "log only"}),  # not an Event Grid type: log line only
    )
    arrived = fake_azure.topic_events(topic)
    assert [e["type"] for e in arrived] == [
        "Broker.Credential.Expiring",
        "Broker.Lease.RevokeFailed",
        "Broker.SecretRotation.Succeeded",
        "Broker.Delivery.Drifted",
    ]
    for event in arrived:
        assert event["specversion"] == "1.0"
        assert event["source"] == events.SOURCE
        uuid.UUID(event["id"])
        assert event["time"].endswith("Z")
    assert arrived[0]["subject"] == "/tenants/t-1/applications/a-1/credentials/k-1"
    assert arrived[0]["data"] == {k: v for k, v in expiring.items() if v is not None}
    assert arrived[1]["subject"] == "/leases/ds.abc"
    assert arrived[2]["subject"] == "/secret-rotations/r-1"
    assert arrived[3]["subject"] == "/secret-rotations/r-1/destinations/key-vault:kv/app-secret"
    after = events.stats()
    assert after["published"] - before["published"] == 4
    assert after["failed"] == before["failed"]


def test_no_event_carries_a_secret(fake_azure: Any, topic: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker.events")
    assert _emit_and_drain(
        ("rotation.failed", {"connectionId": "c-2", "error": "step failed", "clientSecret": SECRET}),
        ("lease.created", {"leaseId": "ds.x", "password": SECRET, "value": SECRET, "refreshToken": SECRET}),
    )
    arrived = fake_azure.topic_events(topic)
    assert [e["type"] for e in arrived] == ["Broker.ConnectionRotation.Failed", "Broker.Lease.Created"]
    assert SECRET not in json.dumps(arrived)
    assert arrived[0]["data"] == {"connectionId": "c-2", "error": "step failed"}
    assert SECRET not in caplog.text
    assert "dropped: an event never carries secret material" in caplog.text


def test_an_event_without_its_contract_fields_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    before = events.stats()["incomplete"]
    events.emit("rotation.failed", connectionId="c-9")  # no error: the alert's table would lack it
    assert events.stats()["incomplete"] == before + 1
    assert "event rotation.failed lacks the field(s) ['error']" in caplog.text


def test_rotation_success_and_failure_reach_the_topic(
    fake_azure: Any,
    topic: str,
    broker: ServerHandle,
    connections: Connections,  # noqa: F811
) -> None:
    before = events.stats()
    good = make_app(fake_azure)
    created = connections.create(good)
    assert created["rotation"]["status"] == "scheduled"
    refused = make_app(fake_azure, permissions=("Application.Read.All",))
    failed = connections.create(refused)
    assert failed["rotation"]["status"] == "failed"

    def mine(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = {created["id"], failed["id"]}
        return [e for e in found if e["data"].get("connectionId") in ids]

    arrived = mine(_wait_for(lambda: fake_azure.topic_events(topic), lambda f: len(mine(f)) >= 2))
    assert events.stats()["incomplete"] == before["incomplete"], "the rotator left out a contract field"
    by_type = {e["type"]: e for e in arrived}
    assert set(by_type) == {"Broker.ConnectionRotation.Succeeded", "Broker.ConnectionRotation.Failed"}
    succeeded = by_type["Broker.ConnectionRotation.Succeeded"]
    assert succeeded["subject"] == f"/app-connections/{created['id']}"
    assert succeeded["data"]["keyId"] == created["rotation"]["clientSecretKeyId"]
    assert by_type["Broker.ConnectionRotation.Failed"]["data"]["error"]
    # No string in any event is a secret the app holds (the new one or the original).
    for app in (good.app, refused.app):
        for event in arrived:
            for value in json.dumps(event["data"]).split('"'):
                assert fake_azure.state.check_secret(app, value) is None


def test_a_failing_topic_is_counted_and_logged_never_raised(
    fake_azure: Any, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake_azure.inject("eventgrid", "503", count=None, retry_after=0)
    before = events.stats()
    caplog.set_level(logging.WARNING, logger="broker.events")
    started = time.perf_counter()
    assert _emit_and_drain(("lease.revoke_failed", {"leaseId": "ds.y", "error": "x"}))
    assert fake_azure.topic_events(topic) == []
    assert events.stats()["failed"] - before["failed"] == 1
    assert "events not published to Event Grid: 1 event(s), HttpResponseError (HTTP 503)" in caplog.text
    assert time.perf_counter() - started < 20
    assert fake_azure.request_count("eventgrid") >= 2  # the SDK retried before giving up


def test_a_sender_without_the_role_is_refused(
    fake_azure: Any, broker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"locked-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("EVENTS_TOPIC_ENDPOINT", fake_azure.add_topic(name, senders=[]))
    get_settings.cache_clear()
    try:
        before = events.stats()
        assert _emit_and_drain(("rotation.succeeded", {"connectionId": "c-3"}))
        assert fake_azure.topic_events(name) == []
        assert events.stats()["failed"] - before["failed"] == 1
    finally:
        get_settings.cache_clear()


def test_emit_never_waits_for_the_topic(fake_azure: Any, topic: str) -> None:
    """A topic that answers after 3 s does not slow the emitting code; drain() waits for it."""
    fake_azure.inject("eventgrid", "delay", seconds=3)

    async def run() -> tuple[float, bool]:
        started = time.perf_counter()
        for index in range(5):
            events.emit("lease.created", leaseId=f"ds.{index}")
        emitted = time.perf_counter() - started
        return emitted, await events.drain(within=20)

    emitted, drained = asyncio.run(run())
    assert emitted < 0.05
    assert drained
    arrived = fake_azure.topic_events(topic)
    assert [e["subject"] for e in arrived] == [f"/leases/ds.{i}" for i in range(5)]
    assert fake_azure.request_count("eventgrid", path_pattern=topic) == 1  # one batch


def test_a_full_outbox_drops_and_counts(fake_azure: Any, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "QUEUE_LIMIT", 3)
    before = events.stats()
    assert _emit_and_drain(*[("lease.created", {"leaseId": f"ds.{i}"}) for i in range(5)])
    assert len(fake_azure.topic_events(topic)) == 3
    assert events.stats()["dropped"] - before["dropped"] == 2
