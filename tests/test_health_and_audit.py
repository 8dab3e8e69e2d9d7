"""Health (no auth; tables and Key Vault readiness) and the audit log route."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from core import audit, clock
from core.auth import Caller, Role
from tests.harness import ServerHandle, assert_problem


def test_health_is_ok_without_auth(anonymous: httpx.Client) -> None:
    response = anonymous.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"tables": {"status": "ok", "detail": ""}, "secretStore": {"status": "ok", "detail": ""}},
    }


def test_health_reports_a_failing_secret_store(anonymous: httpx.Client, fake_azure: Any) -> None:
    fake_azure.inject("keyvault", "503", count=20)
    response = anonymous.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["tables"]["status"] == "ok"
    assert body["checks"]["secretStore"]["status"] == "failing"


def test_audit_entries_are_listed_newest_first(broker: ServerHandle, api: httpx.Client) -> None:
    caller = Caller(id="user-1", name="alice@example.com", roles=frozenset({Role.ADMIN}))
    broker.run(audit.record(caller, "test.first", "thing", "t-1"))
    broker.run(audit.record(caller, "test.second", "thing", "t-1", result="failure", detail="went wrong"))
    items = api.get("/api/v1/audit-logs", params={"resourceId": "t-1"}).json()["items"]
    assert [i["action"] for i in items] == ["test.second", "test.first"]
    assert items[0]["result"] == "failure"
    assert items[0]["actorName"] == "alice@example.com"
    assert items[0]["detail"] == "went wrong"


def test_audit_range_reads_only_its_days(broker: ServerHandle, api: httpx.Client) -> None:
    caller = Caller(id="user-2", name="bob", roles=frozenset({Role.ADMIN}))
    clock.advance(timedelta(days=-3))
    broker.run(audit.record(caller, "test.old", "thing", "t-2"))
    clock.reset()
    broker.run(audit.record(caller, "test.new", "thing", "t-2"))
    recent = api.get(
        "/api/v1/audit-logs",
        params={"resourceId": "t-2", "since": clock.isoformat(clock.now() - timedelta(days=1))},
    )
    assert [i["action"] for i in recent.json()["items"]] == ["test.new"]
    week = api.get("/api/v1/audit-logs", params={"resourceId": "t-2"})
    assert [i["action"] for i in week.json()["items"]] == ["test.new", "test.old"]


def test_audit_bad_range_is_422(api: httpx.Client) -> None:
    assert_problem(
        api.get(
            "/api/v1/audit-logs", params={"since": "2026-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}
        ),
        422,
        "since",
    )
    assert_problem(api.get("/api/v1/audit-logs", params={"limit": "0"}), 422, "limit")
    assert_problem(api.get("/api/v1/audit-logs", params={"since": "yesterday"}), 422, "since")


def _at(moment: datetime, offset_hours: int) -> str:
    return moment.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


@pytest.mark.parametrize(("utc_hour", "offset"), [(12, +14), (2, -12), (12, 0)])
def test_audit_days_are_utc_whatever_the_offset_of_the_range(
    broker: ServerHandle, api: httpx.Client, utc_hour: int, offset: int
) -> None:
    """+14:00 and -12:00 put the range on another local day; the partitions are UTC days."""
    caller = Caller(id="user-3", name="carol", roles=frozenset({Role.ADMIN}))
    resource = f"tz-{utc_hour}-{offset}"
    moment = (clock.now() - timedelta(days=2)).replace(hour=utc_hour, minute=0, second=0, microsecond=0)
    clock.advance(moment - clock.now())
    broker.run(audit.record(caller, "test.tz", "thing", resource))
    clock.reset()
    params = {
        "resourceId": resource,
        "since": _at(moment - timedelta(hours=1), offset),
        "until": _at(moment + timedelta(hours=1), offset),
    }
    items = api.get("/api/v1/audit-logs", params=params).json()["items"]
    assert [i["action"] for i in items] == ["test.tz"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"until": "0001-01-01T00:00:00Z"}, "until"),
        ({"since": "0001-01-01T00:00:00+14:00", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"until": "9999-12-31T23:59:59-12:00"}, "until"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
    ],
)
def test_audit_times_out_of_range_are_422_naming_the_parameter(
    api: httpx.Client, params: dict[str, str], field: str
) -> None:
    assert_problem(api.get("/api/v1/audit-logs", params=params), 422, field)
