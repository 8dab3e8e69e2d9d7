"""Cold start as the Functions worker pays it: import `function_app` and index its functions.

Paired against a baseline that imports only `azure.functions` and `fastapi`, alternating the
two in fresh interpreters so that both see the same machine state.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.table import Table

ROOT = Path(__file__).resolve().parent.parent
RUNS = 15
ENV = {
    **os.environ,
    "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "LOCAL_API_TOKEN": "t",
    "AUTH_MODE": "local",
}

BASELINE = "import azure.functions, fastapi"
APP = "import function_app; function_app.app.get_functions()"
HEAVY = ("msgraph", "azure.identity", "azure.keyvault", "azure.data.tables")
TIMER = (
    "import time, sys; t = time.perf_counter(); {code}; print(time.perf_counter() - t); "
    "print(','.join(sorted(m for m in sys.modules if m in {heavy!r})))"
)


def _once(code: str) -> tuple[float, str]:
    done = subprocess.run(
        [sys.executable, "-X", "frozen_modules=on", "-c", TIMER.format(code=code, heavy=HEAVY)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, loaded = done.stdout.splitlines()[:2] if "\n" in done.stdout.strip() else (done.stdout, "")
    return float(seconds), loaded.strip()


def run() -> list[Table]:
    base: list[float] = []
    app: list[float] = []
    loaded = ""
    _once(APP)  # warm the file cache once, as a host that restarts would have it
    for _ in range(RUNS):
        base.append(_once(BASELINE)[0])
        seconds, loaded = _once(APP)
        app.append(seconds)
    b, a = statistics.median(base), statistics.median(app)
    rows = [
        ["azure.functions + fastapi (baseline)", f"{b * 1000:.0f}", f"{min(base) * 1000:.0f}", "1.00"],
        ["function_app + index functions", f"{a * 1000:.0f}", f"{min(app) * 1000:.0f}", f"{a / b:.2f}"],
    ]
    title = (
        f"Cold start (median of {RUNS} fresh interpreters, goal ratio <= 1.5); "
        f"heavy SDKs loaded at start: {loaded or 'none'}"
    )
    return [(title, ["import", "median ms", "min ms", "ratio"], rows)]
