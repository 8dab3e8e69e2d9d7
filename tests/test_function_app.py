"""The Functions app as the host indexes it, and what its import costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import ServerHandle

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("msgraph", "azure.identity", "azure.keyvault", "azure.data.tables", "kiota_http", "jwt", "aiohttp")
ENV = {
    **os.environ,
    "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "LOCAL_API_TOKEN": "t" * 32,
    "AUTH_MODE": "local",
}


def _indexed() -> list[dict[str, Any]]:
    """Index function_app in a fresh interpreter, as the Python worker does at start."""
    code = (
        "import json, function_app\n"
        "out = []\n"
        "for f in function_app.app.get_functions():\n"
        "    out.append({'name': f.get_function_name(), **json.loads(f.get_function_json())})\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def test_one_http_function_serves_every_route_anonymously() -> None:
    functions = _indexed()
    http = [f for f in functions if any(b["type"] == "httpTrigger" for b in f["bindings"])]
    assert len(http) == 1
    trigger = next(b for b in http[0]["bindings"] if b["type"] == "httpTrigger")
    assert trigger["route"] == "/{*route}"
    assert trigger["authLevel"].lower() == "anonymous"
    assert {"GET", "POST", "PATCH", "DELETE"} <= {m.upper() for m in trigger["methods"]}


def test_four_timers_read_their_schedules_from_settings() -> None:
    timers = {
        f["name"]: next(b for b in f["bindings"] if b["type"] == "timerTrigger")
        for f in _indexed()
        if any(b["type"] == "timerTrigger" for b in f["bindings"])
    }
    assert {name: t["schedule"] for name, t in timers.items()} == {
        "rotation_timer": "%ROTATION_SCHEDULE%",
        "lease_expiry_timer": "%EXPIRY_SWEEP_SCHEDULE%",
        "reconcile_timer": "%RECONCILE_SCHEDULE%",
        "inventory_timer": "%INVENTORY_SCHEDULE%",
    }
    assert all(t["useMonitor"] for t in timers.values())


def test_host_json_serves_the_oauth_callback_path() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_heavy_sdks_are_not_imported_at_start() -> None:
    code = "import sys, function_app\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True
    )
    loaded = done.stdout.split()
    assert not [m for m in loaded if m.startswith(HEAVY)]


def test_bad_settings_stop_the_start_and_name_the_setting() -> None:
    env = {**ENV, "GRAPH_ENDPOINT": "graph.microsoft.com", "ROTATION_SCHEDULE": "every minute"}
    done = subprocess.run(
        [sys.executable, "-c", "import function_app"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "GRAPH_ENDPOINT: " in done.stderr
    assert "ROTATION_SCHEDULE: " in done.stderr
    assert "Traceback" in done.stderr  # the worker shows it; the message names each bad setting


def test_the_indexed_http_function_serves_the_api(broker: ServerHandle) -> None:
    """A request through the Functions ASGI adapter, as the host invokes it, reaches the lazily built app."""
    import azure.functions as func

    import function_app

    async def invoke(url: str) -> func.HttpResponse:
        request = func.HttpRequest("GET", url, headers={}, body=b"")
        response: func.HttpResponse = await function_app.app.middleware.handle_async(request, None)
        return response

    docs = broker.run(invoke("http://localhost/api/openapi.json"))
    assert docs.status_code == 200
    assert "/api/v1/dynamic-secrets" in json.loads(docs.get_body())["paths"]
    missing = broker.run(invoke("http://localhost/api/v1/nope"))
    assert missing.status_code == 404
    assert missing.mimetype == "application/problem+json"
