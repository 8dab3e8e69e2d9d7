"""Start and stop Azurite's Table service (the local stand-in for Table Storage).

Shared by `make run`, the benchmarks and the test suite so all start it the same way. It lives
under tests/ so that it never ships in the Functions package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret: the same in every Azurite install).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ROOT = Path(__file__).resolve().parent.parent  # the repository


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite-table"
    found = str(local) if local.exists() else shutil.which("azurite-table")
    if not found:
        raise RuntimeError("azurite-table not found: run `npm install` in the project (make does it)")
    return found


def start_azurite(location: Path, port: int | None = None, log_file: Path | None = None) -> Azurite:
    """Start azurite-table on loopback and wait until it accepts connections."""
    port = port or free_port()
    location.mkdir(parents=True, exist_ok=True)
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(
        [
            executable(),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(port),
            "--location",
            str(location),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite-table exited with {process.returncode}; is port {port} free?")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Azurite(process, port)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("azurite-table did not start within 30s")
