"""`make run`'s stack as a new user gets it: Azurite + the API + the timers, in one process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.azurite import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_local_stack_serves_health_docs_and_runs_timers(tmp_path: Path) -> None:
    port, table_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TABLES_", "KEY_VAULT", "AUTH_", "LOCAL_", "AZURE_", "GRAPH_", "SITE_"))
    }
    env.update(
        PORT=str(port),
        AZURITE_TABLE_PORT=str(table_port),
        ROTATION_SCHEDULE="*/2 * * * * *",
        EXPIRY_SWEEP_SCHEDULE="*/2 * * * * *",
        RECONCILE_SCHEDULE="*/2 * * * * *",
        LOCAL_SECRETS_DIR=str(tmp_path / "secrets"),
    )
    log = (tmp_path / "run.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/api/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None, Path(log.name).read_text()
        assert health.status_code == 200, health.text
        assert health.json()["checks"] == {
            "tables": {"status": "ok", "detail": ""},
            "secretStore": {"status": "ok", "detail": ""},
        }
        assert httpx.get(f"{base}/api/docs", timeout=5).status_code == 200
        token = (ROOT / ".local" / "api-token").read_text().strip()
        audit = httpx.get(
            f"{base}/api/v1/audit-logs", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert audit.status_code == 200
        output = ""
        while time.monotonic() < deadline:
            output = Path(log.name).read_text()
            if all(f"job {name} finished" in output for name in ("rotation", "lease_expiry", "reconcile")):
                break
            time.sleep(0.5)
        assert "job rotation finished" in output
        assert "job lease_expiry finished" in output
        assert "job reconcile finished" in output
        failures = [line for line in output.splitlines() if "broker.jobs" in line and "failed" in line]
        assert not failures, output  # no step of any job failed
        assert f"API docs: {base}/api/docs" in output
        assert token in output  # the local token is printed for the user
    finally:
        process.send_signal(signal.SIGTERM)  # as `kill` or a closed terminal; Ctrl-C takes the same path
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    output = Path(log.name).read_text()
    assert "stopped." in output
    assert "Unclosed" not in output, output  # every client closed when the runner stopped
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{table_port}/", timeout=2)  # Azurite stopped with it
