"""Every alert rule and workbook query reads the event lines core/events.py really writes.

Lines are rendered through the real logging path (`events.emit` -> the `broker.events` logger ->
the record's message, which is what lands in `traces.message`) and each query is run over them
with the KQL subset in tests/kql.py. A query that selects nothing (the old `ev.eventName`), or
reads a field the event does not carry (a rename), fails here, naming the query and the field.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import events
from tests.kql import Evaluator, Table
from tests.test_infra import INFRA, MODULES, alert_rules, resolve

NOW = datetime.now(UTC)
SOON = (NOW + timedelta(days=5)).isoformat().replace("+00:00", "Z")
LATER = (NOW + timedelta(days=20)).isoformat().replace("+00:00", "Z")
EVENT_NAME = re.compile(r'"([a-z_]+\.[a-z_]+)"')


def _fields(name: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {field: f"{field}-1" for field in events.FIELDS.get(name, ())}
    if "endDateTime" in values:
        values["endDateTime"] = SOON
    if "managedBy" in values:
        values["managedBy"] = "secret-rotation"
    values.update(overrides)
    return values


# (label, event, fields): one line per event the broker writes, plus an unmanaged and a later
# expiring credential (managedBy absent is how "no rotation manages it" is written).
SAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    *[(name, name, _fields(name)) for name in events.FIELDS],
    ("reconcile.fixed", "reconcile.fixed", {"kind": "rotation", "connectionId": "c-1"}),
    ("credential.expiring/unmanaged", "credential.expiring", _fields("credential.expiring", managedBy=None)),
    (
        "credential.expiring/later",
        "credential.expiring",
        _fields("credential.expiring", managedBy=None, keyId="k-later", endDateTime=LATER),
    ),
]


def render(
    caplog: pytest.LogCaptureFixture, samples: list[tuple[str, str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """`traces` rows for the samples, each written by events.emit through logging."""
    rows = []
    caplog.set_level(logging.INFO, logger="broker.events")
    for index, (label, name, fields) in enumerate(samples):
        caplog.clear()
        events.emit(name, **fields)
        (record,) = [r for r in caplog.records if r.name == "broker.events"]
        at = NOW - timedelta(seconds=len(samples) - index)  # in order, the last one newest
        rows.append({"timestamp": at, "message": record.getMessage(), "severityLevel": 1, "label": label})
    return rows


def event_queries() -> dict[str, str]:
    """Every query over `traces`: the alert rules' and the workbook's."""
    import json

    queries = {f"alert:{name}": rule["query"] for name, rule in alert_rules().items()}
    content = json.loads((INFRA / "workbook.json").read_text())
    for item in content["items"]:
        if "query" in item["content"]:
            queries[f"workbook:{item['name']}"] = item["content"]["query"]
    return {name: q for name, q in queries.items() if q.startswith("traces")}


def run(query: str, tables: dict[str, Table]) -> tuple[Table, set[str]]:
    evaluator = Evaluator(tables, now=NOW)
    return evaluator.run(query), evaluator.missing


def traces(rows: list[dict[str, Any]]) -> dict[str, Table]:
    return {"traces": Table(["timestamp", "message", "severityLevel", "label"], rows)}


def test_there_are_event_queries_for_every_alerted_event() -> None:
    queries = "\n".join(event_queries().values())
    assert len(event_queries()) >= 12
    for name in events.TYPES:
        assert f'"{name}"' in queries, f"no alert or workbook query reads {name}"


@pytest.mark.parametrize("query_name", sorted(event_queries()))
def test_query_selects_the_events_it_names_and_reads_fields_they_carry(
    query_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = event_queries()[query_name]
    named = set(EVENT_NAME.findall(query)) & set(events.TYPES)
    assert named, f"{query_name} names no event"
    selected: set[str] = set()
    for row in render(caplog, SAMPLES):
        result, missing = run(query, traces([row]))
        if not result.rows:
            continue
        label = row["label"]
        event = label.split("/")[0]
        selected.add(event)
        # A field may be absent only where its event's contract does not promise it and another
        # event the query selects does (a mixed table), or where absence is the meaning
        # (managedBy: no rotation manages the credential).
        others = {f for name in named - {event} for f in events.FIELDS.get(name, ())}
        allowed = others - set(events.FIELDS.get(event, ()))
        if "/" in label:
            allowed.add("managedBy")
        assert missing <= allowed, f"{query_name} reads {sorted(missing - allowed)} that {label} lines lack"
        for out in result.rows:
            for column, value in out.items():
                assert value is not None, f"{query_name}: column {column} is empty for {label}"
    assert selected == named, f"{query_name} selects {sorted(selected)} but names {sorted(named)}"


def test_the_old_field_name_would_have_been_caught(caplog: pytest.LogCaptureFixture) -> None:
    """The check above fails on the bug it exists for: `ev.eventName` selects no real line."""
    query = event_queries()["workbook:rotation-failures"].replace("ev.event)", "ev.eventName)")
    assert "ev.eventName" in query
    for row in render(caplog, SAMPLES):
        result, missing = run(query, traces([row]))
        assert result.rows == []
        assert "eventName" in missing


def test_unmanaged_expiring_alert_counts_only_unmanaged_credentials_within_7_days(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result, _ = run(alert_rules()["expiringUnmanaged"]["query"], traces(render(caplog, SAMPLES)))
    # Managed (secret-rotation) and 20-days-away credentials do not count; the 5-day unmanaged one does.
    assert result.rows == [{"tenantId": "tenantId-1", "credentials": 1}]


def test_inventory_tile_counts_7_and_30_days_by_tenant(caplog: pytest.LogCaptureFixture) -> None:
    query = event_queries()["workbook:inventory-expiring-by-tenant"]
    result, _ = run(query, traces(render(caplog, SAMPLES)))
    # Three credentials: managed in 5 days, unmanaged in 5 days (same key: the latest line wins),
    # unmanaged in 20 days.
    assert result.rows == [{"tenantId": "tenantId-1", "within7Days": 1, "within30Days": 2, "unmanaged": 2}]


def test_rotation_alert_splits_by_connection(caplog: pytest.LogCaptureFixture) -> None:
    samples = [("a", "rotation.failed", {"connectionId": c, "error": "e"}) for c in ("c-1", "c-1", "c-2")]
    result, _ = run(alert_rules()["rotationFailed"]["query"], traces(render(caplog, samples)))
    assert result.rows == [{"connectionId": "c-1", "failures": 2}, {"connectionId": "c-2", "failures": 1}]


# ---------------------------------------------------------------------------------------------
# the request-telemetry queries


def _requests(*specs: tuple[str, str, str, bool]) -> dict[str, Table]:
    rows = [
        {
            "timestamp": NOW,
            "name": name,
            "operation_Name": name,
            "url": url,
            "resultCode": code,
            "success": ok,
        }
        for name, url, code, ok in specs
    ]
    columns = ["timestamp", "name", "operation_Name", "url", "resultCode", "success"]
    exceptions = Table(["timestamp", "problemId", "operation_Name"], [])
    return {"requests": Table(columns, rows), "exceptions": exceptions}


def _marker() -> str:
    return str(resolve(MODULES / "alerts.bicep", "smokeTestMarker"))


def _http_query(name: str) -> str:
    return str(alert_rules()[name]["query"]).replace("${smokeTestMarker}", _marker())


def test_the_5xx_alert_ignores_the_deploy_smoke_test() -> None:
    site = "https://func-broker-x.azurewebsites.net"
    smoke = [("http_app_func", f"{site}/api/health?{_marker()}", "503", False)] * 12
    ok = [("http_app_func", f"{site}/api/v1/leases", "200", True)] * 10
    result, _ = run(_http_query("http5xxRate"), _requests(*smoke, *ok))
    assert [row["failedPercent"] for row in result.rows] == [0.0]
    real = [("http_app_func", f"{site}/api/v1/leases", "503", False)] * 5
    result, _ = run(_http_query("http5xxRate"), _requests(*smoke, *ok, *real))
    assert [round(row["failedPercent"]) for row in result.rows] == [33]


def test_function_errors_name_the_functions_and_skip_the_smoke_test() -> None:
    site = "https://func-broker-x.azurewebsites.net"
    tables = _requests(
        ("http_app_func", f"{site}/api/health?{_marker()}", "503", False),
        ("http_app_func", f"{site}/api/v1/leases", "404", False),
        ("http_app_func", f"{site}/api/v1/leases", "500", False),
        ("rotation_timer", "", "0", False),
        ("lease_expiry_timer", "", "0", True),
    )
    result, _ = run(_http_query("functionErrors"), tables)
    assert result.rows == [
        {"operation_Name": "http_app_func", "failures": 1},
        {"operation_Name": "rotation_timer", "failures": 1},
    ]


def test_heartbeat_fires_for_a_timer_that_has_not_run() -> None:
    query = alert_rules()["timerHeartbeat"]["query"]
    both = _requests(("rotation_timer", "", "0", True), ("lease_expiry_timer", "", "0", True))
    assert run(query, both)[0].rows == []
    one = _requests(("rotation_timer", "", "0", True), ("reconcile_timer", "", "0", True))
    assert run(query, one)[0].rows == [{"timer": "lease_expiry_timer", "missing": 1}]
    none = _requests()
    assert {row["timer"] for row in run(query, none)[0].rows} == {"rotation_timer", "lease_expiry_timer"}
