"""Dependency telemetry: nothing at worker start, configured in the background on first use.

In a fresh interpreter (the distro's tracer provider is process-wide): the worker's start imports
no OpenTelemetry SDK; the first Azure client starts the configuration; afterwards a Key Vault call
(azure-core) and an httpx call (Graph through kiota, DevOps) produce client spans, which the
distro exports to Application Insights as dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, threading, http.server
import function_app  # the worker's start
started = sorted(m for m in ("azure.monitor.opentelemetry", "opentelemetry.sdk.trace") if m in sys.modules)

from core import telemetry
from core.azure_clients import client_secret_credential
client_secret_credential("00000000-0000-0000-0000-000000000001", "app", "not-a-secret")  # first use
assert telemetry.configured.wait(60), "telemetry was not configured"

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
import httpx
httpx.get(f"http://127.0.0.1:{server.server_port}/devops/org/_apis/projects")

from azure.core.credentials import AccessToken
from azure.keyvault.secrets import SecretClient
class Static:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("t", 4102444800)
vault = SecretClient("https://127.0.0.1:1", Static(), verify_challenge_resource=False)
try:
    vault.get_secret("x", retry_total=0)
except Exception:
    pass
spans = [
    {"name": s.name, "kind": s.kind.name, "url": s.attributes.get("url.full") or s.attributes.get("http.url")}
    for s in exporter.get_finished_spans()
]
print(json.dumps({"started": started, "spans": spans}))
"""


@pytest.mark.timeout(180)
def test_dependencies_are_traced_after_first_use_and_nothing_at_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "AUTH_MODE": "local",
        "LOCAL_API_TOKEN": "t" * 32,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:1/"
        ),
        "TMPDIR": str(tmp_path),
    }
    env.pop("WEBSITE_INSTANCE_ID", None)
    # The distro samples by default (a rate-limited sampler, 5 traces/s, that drops some of a fresh
    # process's first spans: 5 of 12 probes missed one without this). Sampling is a deployment's
    # choice (the same OTEL_TRACES_SAMPLER app setting); this probe wants every span.
    env["OTEL_TRACES_SAMPLER"] = "always_on"
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=55
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["started"] == [], "the worker's start imported the telemetry SDK"
    spans: list[dict[str, Any]] = result["spans"]
    # The Key Vault call, traced by azure-core as its operation span or its HTTP span.
    assert any(s["name"].endswith(".get_secret") or "/secrets/x/" in (s["url"] or "") for s in spans), spans
    # The DevOps call (httpx, as Graph through kiota), a CLIENT span.
    assert any(
        s["kind"] == "CLIENT" and (s["url"] or "").endswith("/devops/org/_apis/projects") for s in spans
    ), spans


def test_nothing_starts_without_application_insights(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import telemetry

    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    assert telemetry.start() is False
    assert not telemetry.configured.is_set()
