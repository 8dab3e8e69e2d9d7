"""Azure Functions entry point: wiring only.

One ASGI HTTP function serves the FastAPI app (`api`) for every route; three timers run the
rotation, lease expiry and reconcile jobs on the schedules in their app settings.
"""

from __future__ import annotations

import azure.functions as func

from connections import client_secrets_routes, devops_routes, oauth_routes
from core.api import create_app
from core.jobs import Job, run_job
from core.settings import get_settings
from leases import reconciler as lease_reconciler
from leases import routes as lease_routes
from leases import sweeper
from rotation import reconciler as rotation_reconciler
from rotation import routes as rotation_routes
from rotation import timer as rotation_timer_job

get_settings()  # fail at start, naming the bad setting, rather than on the first request

api = create_app(
    [
        client_secrets_routes.router,
        devops_routes.router,
        oauth_routes.router,
        rotation_routes.router,
        lease_routes.router,
    ]
)

ROTATION = Job("rotation", "ROTATION_SCHEDULE", [rotation_timer_job.rotate_due_connections])
LEASE_EXPIRY = Job("lease_expiry", "EXPIRY_SWEEP_SCHEDULE", [sweeper.sweep_expired_leases])
RECONCILE = Job(
    "reconcile",
    "RECONCILE_SCHEDULE",
    [
        rotation_reconciler.reconcile_rotations,
        lease_reconciler.reconcile_leases,
        lease_reconciler.purge_old_leases,
    ],
)
JOBS = (ROTATION, LEASE_EXPIRY, RECONCILE)

app = func.AsgiFunctionApp(app=api, http_auth_level=func.AuthLevel.ANONYMOUS)


@app.timer_trigger(schedule="%ROTATION_SCHEDULE%", arg_name="timer", use_monitor=True)
async def rotation_timer(timer: func.TimerRequest) -> None:
    await run_job(ROTATION)


@app.timer_trigger(schedule="%EXPIRY_SWEEP_SCHEDULE%", arg_name="timer", use_monitor=True)
async def lease_expiry_timer(timer: func.TimerRequest) -> None:
    await run_job(LEASE_EXPIRY)


@app.timer_trigger(schedule="%RECONCILE_SCHEDULE%", arg_name="timer", use_monitor=True)
async def reconcile_timer(timer: func.TimerRequest) -> None:
    await run_job(RECONCILE)
