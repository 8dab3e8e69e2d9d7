"""HTTP: rotate a Client Secret connection's secret now."""

from __future__ import annotations

from fastapi import APIRouter

from core.deps import Operator, PathId
from core.errors import UpstreamError
from rotation.service import RotationView, view_of

router = APIRouter(prefix="/api/v1/app-connections/azure-client-secrets", tags=["rotation"])


@router.post(
    "/{connection_id}/rotate",
    response_model=RotationView,
    summary="Rotate the connection's client secret now (Operator or Admin)",
    description=(
        "Adds a new client secret to the app, proves it gets a token, switches the connection to it "
        "and removes the previous one. 409 if a rotation is in flight or rotation is not configured; "
        "502 if it failed (the connection keeps its working secret; the timer retries with backoff)."
    ),
    responses={409: {"description": "in flight / not configured"}, 502: {"description": "failed"}},
)
async def rotate_connection(
    connection_id: PathId,
    caller: Operator,
) -> RotationView:
    from rotation import azure_steps, runs

    await azure_steps.facts(connection_id)  # 404 for an unknown connection
    record = await runs.rotate_now(connection_id, caller, trigger="manual")
    view = view_of(record)
    if view.status == "failed":
        raise UpstreamError(
            f"the rotation failed; the connection keeps its working secret: {view.last_error}",
            code="rotation-failed",
            extra={"rotation": view.model_dump(mode="json")},
        )
    return view
