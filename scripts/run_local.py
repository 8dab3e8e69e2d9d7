"""`make run`: Azurite + the API under uvicorn + the timer jobs, until Ctrl-C.

Settings come from the environment; what is unset gets a local default (Azurite's
connection string, local auth with a token kept in .local/api-token, the local secret store).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
sys.path.insert(0, str(ROOT))

from tests.azurite import start_azurite  # noqa: E402

HOST, PORT = "127.0.0.1", int(os.environ.get("PORT", "7071"))


def _token() -> str:
    path = LOCAL / "api-token"
    if not path.exists():
        LOCAL.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


async def _serve() -> None:
    import uvicorn

    import function_app
    from core.loop_cache import close_all
    from core.runner import run_timers

    server = uvicorn.Server(uvicorn.Config(function_app.api, host=HOST, port=PORT, log_level="info"))
    timers = asyncio.create_task(run_timers(function_app.JOBS))
    try:
        await server.serve()
    finally:
        timers.cancel()
        await close_all()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    azurite = None
    if "TABLES_CONNECTION_STRING" not in os.environ and "TABLES_ENDPOINT" not in os.environ:
        azurite = start_azurite(
            LOCAL / "azurite",
            port=int(os.environ.get("AZURITE_TABLE_PORT", "10002")),
            log_file=LOCAL / "azurite.log",
        )
        os.environ["TABLES_CONNECTION_STRING"] = azurite.connection_string
    os.environ.setdefault("AUTH_MODE", "local")
    if os.environ["AUTH_MODE"] == "local":
        os.environ.setdefault("LOCAL_API_TOKEN", _token())
    os.environ.setdefault("LOCAL_SECRETS_DIR", str(LOCAL / "secrets"))
    os.environ.setdefault("SITE_URL", f"http://{HOST}:{PORT}")
    base = f"http://{HOST}:{PORT}"
    print(
        f"\n  azure-credential-broker is starting on {base}\n"
        f"  health:   {base}/api/health\n"
        f"  API docs: {base}/api/docs\n"
        + (
            f"  token:    {os.environ['LOCAL_API_TOKEN']}   (send as 'Authorization: Bearer <token>')\n"
            if os.environ["AUTH_MODE"] == "local"
            else ""
        )
        + "  timers:   rotation, lease expiry, reconcile and inventory run on their schedules\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
    # SIGTERM (a closed terminal, `kill`) stops like Ctrl-C, so Azurite is stopped too: uvicorn shuts
    # down gracefully and then raises the signal again, which by default would end the process here.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(_serve())
    except KeyboardInterrupt:
        pass
    finally:
        if azurite:
            azurite.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
