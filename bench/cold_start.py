"""Cold start as the Functions worker pays it: import `function_app` and index its functions.

Telemetry is on (APPLICATIONINSIGHTS_CONNECTION_STRING set, as in Azure); the Azure Monitor distro
is configured on a background thread at first use, and its last row shows what that thread costs.

Paired against a baseline that imports only `azure.functions` and `fastapi`, alternating them
in fresh interpreters so that all see the same machine state. The API app and each job's
modules are built on first use; the rows after the goal row show what the first HTTP request
and the first timer run pay for that, so nothing is hidden by the laziness.
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
    "LOCAL_API_TOKEN": "t" * 32,
    "AUTH_MODE": "local",
    # Telemetry on, as in Azure: the goal row must not pay for it (core.telemetry is lazy).
    "APPLICATIONINSIGHTS_CONNECTION_STRING": (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:1/"
    ),
}

BASELINE = "import azure.functions, fastapi"
APP = "import function_app; function_app.app.get_functions()"
FIRST_REQUEST = APP + "; function_app.api"
FIRST_TIMERS = (
    APP + "; from core.jobs import resolve; [resolve(s) for j in function_app.JOBS for s in j.steps]"
)
TELEMETRY = APP + "; from core import telemetry; telemetry.configure()"
HEAVY = ("azure.monitor.opentelemetry", "msgraph", "azure.identity", "azure.keyvault", "azure.data.tables")
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
    samples: dict[str, list[float]] = {
        BASELINE: [],
        APP: [],
        FIRST_REQUEST: [],
        FIRST_TIMERS: [],
        TELEMETRY: [],
    }
    loaded = ""
    _once(APP)  # warm the file cache once, as a host that restarts would have it
    for _ in range(RUNS):
        for code, times in samples.items():
            seconds, heavy = _once(code)
            times.append(seconds)
            if code == APP:
                loaded = heavy
    base = statistics.median(samples[BASELINE])
    labels = {
        BASELINE: "azure.functions + fastapi (baseline)",
        APP: "function_app + index functions (goal row)",
        FIRST_REQUEST: "  + build the API app (first HTTP request)",
        FIRST_TIMERS: "  + import the three jobs (first timer runs)",
        TELEMETRY: "  + configure telemetry (background thread on first use)",
    }
    rows = [
        [
            labels[code],
            f"{statistics.median(times) * 1000:.0f}",
            f"{min(times) * 1000:.0f}",
            f"{statistics.median(times) / base:.2f}",
        ]
        for code, times in samples.items()
    ]
    title = (
        f"Cold start (median of {RUNS} fresh interpreters, goal ratio <= 1.5); "
        f"heavy SDKs loaded at start: {loaded or 'none'}"
    )
    return [(title, ["import", "median ms", "min ms", "ratio"], rows)]
