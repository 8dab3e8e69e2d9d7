"""Azure Functions entry point: wiring only.

One ASGI HTTP function serves the FastAPI app (`api`) for every route; four timers run the
rotation, lease expiry, reconcile and inventory jobs on the schedules in their app settings. The API and
each job's modules are imported on first use (see core.api.LazyApp and core.jobs), so the
worker's start pays for neither.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func
from fastapi import FastAPI

from core import connection_seam
from core.api import LazyApp, create_app
from core.jobs import Job, run_job
from core.settings import get_settings

get_settings()  # fail at start, naming the bad setting, rather than on the first request


# The domain packages never import each other: these modules register what they offer one
# another in core.connection_seam (imported on first use, so cold start pays nothing).
connection_seam.wire(("connections.access", "rotation.hooks"))


def build_api() -> FastAPI:
    """The FastAPI app with every domain router."""
    from connections import oauth_routes, routes
    from inventory import routes as inventory_routes
    from leases import routes as lease_routes
    from rotation import routes as rotation_routes
    from rotation import secret_routes

    return create_app(
        [
            *routes.routers(),
            oauth_routes.router,
            rotation_routes.router,
            secret_routes.router,
            lease_routes.router,
            inventory_routes.router,
        ]
    )


http = LazyApp(build_api)

ROTATION = Job(
    "rotation",
    "ROTATION_SCHEDULE",
    ["rotation.timer:rotate_due_connections", "rotation.timer:rotate_due_secret_rotations"],
)
LEASE_EXPIRY = Job("lease_expiry", "EXPIRY_SWEEP_SCHEDULE", ["leases.sweeper:sweep_expired_leases"])
RECONCILE = Job(
    "reconcile",
    "RECONCILE_SCHEDULE",
    [
        "connections.reconciler:finish_deletes",
        "rotation.reconciler:reconcile_rotations",
        "rotation.secret_runs:reconcile_secret_rotations",
        "leases.reconciler:reconcile_leases",
        "leases.reconciler:purge_old_leases",
    ],
)
INVENTORY = Job("inventory", "INVENTORY_SCHEDULE", ["inventory.timer:scan_inventory"])
JOBS = (ROTATION, LEASE_EXPIRY, RECONCILE, INVENTORY)

app = func.AsgiFunctionApp(app=http, http_auth_level=func.AuthLevel.ANONYMOUS)


def _timer(job: Job) -> None:
    """Register the Functions timer `<job>_timer`, on the schedule its app setting holds (%SETTING%)."""

    async def run(timer: func.TimerRequest) -> None:
        await run_job(job, past_due=timer.past_due)

    on_schedule = app.timer_trigger(schedule=f"%{job.schedule_setting}%", arg_name="timer", use_monitor=True)
    app.function_name(f"{job.name}_timer")(on_schedule(run))


for _job in JOBS:
    _timer(_job)


def __getattr__(name: str) -> Any:
    """`function_app.api`: the FastAPI app itself (uvicorn, tests), built on first access."""
    if name == "api":
        return http.app
    raise AttributeError(name)
