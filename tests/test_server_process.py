"""The broker as its own process, as uvicorn (make run) or the Functions worker runs it: what reaches
its logs and what it leaves open when it stops.

Both are whole-process properties (uvicorn's own traceback logging, aiohttp's warnings at
exit), so each test starts a real server process, sends real requests, stops it with SIGINT
and reads everything it printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.azurite import free_port
from tests.harness import ServerHandle

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-in-an-exception-text"
CAUSE = "s3cr3t-in-the-exception-it-was-raised-from"

BOOM_SERVER = f"""
import logging, sys
import uvicorn
from fastapi import APIRouter
from core.api import create_app

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
router = APIRouter()

@router.get("/api/v1/boom")
async def boom() -> None:
    try:
        raise ValueError({CAUSE!r})
    except ValueError as error:
        raise RuntimeError({SECRET!r}) from error

uvicorn.run(create_app([router]), host="127.0.0.1", port=int(sys.argv[1]), log_level="debug")
"""

BROKER_SERVER = """
import logging, sys
import uvicorn
import function_app

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
uvicorn.run(function_app.api, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
"""


CLIENTS_SCRIPT = """
import asyncio, gc, sys

async def use_every_core_client() -> None:
    from core import azure_clients, secret_store, tables
    await tables.ping()
    await secret_store.secret_store().ping()  # the broker credential and the SecretClient
    await (await azure_clients.http_client()).get(sys.argv[1])

async def main() -> None:
    from core import azure_clients, secret_store, tables
    await use_every_core_client()
    for module in (azure_clients, secret_store, tables):  # settings changed, as the benches do
        module.reset_clients()
    await use_every_core_client()

asyncio.run(main())  # ends without close_all, as a bench or a script does
gc.collect()
print("ended", file=sys.stderr)
"""


def _serve(code: str, env: dict[str, str], requests: Callable[[str], None], log: Path) -> str:
    """Start `code` on a free port, run `requests` against it, stop it with SIGINT; its output."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/api/openapi.json", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        requests(base)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return log.read_text()


@pytest.mark.slow
def test_an_unhandled_exception_text_never_reaches_the_server_logs(tmp_path: Path) -> None:
    env = {**os.environ, "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true", "AUTH_MODE": "local"}
    env["LOCAL_API_TOKEN"] = "x" * 32

    def requests(base: str) -> None:
        for _ in range(2):
            response = httpx.get(f"{base}/api/v1/boom", headers={"x-request-id": "req-boom"}, timeout=10)
            assert response.status_code == 500
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["x-request-id"] == "req-boom"
            assert SECRET not in response.text

    output = _serve(BOOM_SERVER, env, requests, tmp_path / "server.log")
    assert "unhandled RuntimeError on GET /api/v1/boom" in output  # it was logged ...
    assert "in boom" in output  # ... with where it happened ...
    assert SECRET not in output  # ... but never its text,
    assert CAUSE not in output  # nor the text of what it was raised from
    assert "Exception in ASGI application" not in output  # the server never saw it


@pytest.mark.slow
def test_a_stopped_broker_leaves_no_client_session_open(
    broker: ServerHandle, token: Callable[..., str], tmp_path: Path
) -> None:
    """Requests through Key Vault (broker credential + SecretClient), tables and the JWKS client."""

    def requests(base: str) -> None:
        health = httpx.get(f"{base}/api/health", timeout=30)
        assert health.json()["checks"]["secretStore"]["status"] == "ok", health.text
        assert health.json()["checks"]["tables"]["status"] == "ok", health.text
        audit = httpx.get(
            f"{base}/api/v1/audit-logs", headers={"Authorization": f"Bearer {token()}"}, timeout=30
        )
        assert audit.status_code == 200, audit.text

    output = _serve(BROKER_SERVER, dict(os.environ), requests, tmp_path / "broker.log")
    assert "Application shutdown complete" in output, output
    assert "Unclosed" not in output, output
    assert "ResourceWarning" not in output, output


@pytest.mark.slow
def test_a_loop_that_ends_closes_every_client_it_opened(broker: ServerHandle, fake_azure: Any) -> None:
    """asyncio.run ending (benches, scripts) closes the clients, also those a settings reset set aside."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENTS_SCRIPT, fake_azure.authority_host],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "ended" in done.stderr
    assert "Unclosed" not in done.stderr, done.stderr
