"""HTTP: secret rotations of target apps (thin: the service and the runs do the work)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from core import audit
from core.deps import Admin, Operator, PathId, Reader
from core.errors import NotFound
from rotation import secret_runs, secret_service
from rotation.secret_models import (
    CurrentSecret,
    SecretRotationCreate,
    SecretRotationPatch,
    SecretRotationView,
    view_of,
)
from rotation.secret_records import SecretRotationRecord

router = APIRouter(prefix="/api/v1/secret-rotations", tags=["secret rotations"])
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256, description="ETag from a GET")]


async def _existing(rotation_id: PathId) -> SecretRotationRecord:
    return await secret_service.get(rotation_id)


# The secret rotation a route's path names (a 404 problem if there is none); declared after the
# caller, so an unauthorised request learns nothing about which rotations exist.
ExistingRotation = Annotated[SecretRotationRecord, Depends(_existing)]


def _shown(record: SecretRotationRecord, response: Response) -> SecretRotationView:
    """The view of `record`, its ETag on the response (a later PATCH or DELETE sends it as If-Match)."""
    if record.etag:
        response.headers["ETag"] = record.etag
    return view_of(record)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretRotationView,
    summary="Create a secret rotation (Admin); its first rotation runs at once",
    description="A failure of the first rotation does not fail the create (status failed, timer retries).",
)
async def create_secret_rotation(
    body: SecretRotationCreate, caller: Admin, response: Response
) -> SecretRotationView:
    record = await secret_service.create(body, caller)
    response.headers["Location"] = f"{router.prefix}/{record.id}"
    return _shown(record, response)


@router.get("", response_model=list[SecretRotationView], summary="List secret rotations (metadata only)")
async def list_secret_rotations(caller: Reader) -> list[SecretRotationView]:
    return [view_of(r) for r in await secret_service.list_all()]


@router.get("/{rotation_id}", response_model=SecretRotationView, summary="Read a secret rotation")
async def read_secret_rotation(
    caller: Reader, record: ExistingRotation, response: Response
) -> SecretRotationView:
    return _shown(record, response)


@router.patch(
    "/{rotation_id}",
    response_model=SecretRotationView,
    summary="Update the schedule, lifetime or destinations (Admin; If-Match honoured)",
)
async def update_secret_rotation(
    rotation_id: PathId,
    body: SecretRotationPatch,
    caller: Admin,
    response: Response,
    if_match: IfMatch = None,
) -> SecretRotationView:
    return _shown(await secret_service.update(rotation_id, body, caller, if_match=if_match), response)


@router.delete(
    "/{rotation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete (Admin): removes every broker-made secret of it from the target unless keepSecrets=true",
)
async def delete_secret_rotation(
    rotation_id: PathId,
    caller: Admin,
    keep_secrets: Annotated[bool, Query(alias="keepSecrets")] = False,
    if_match: IfMatch = None,
) -> Response:
    await secret_service.delete(rotation_id, caller, keep_secrets=keep_secrets, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{rotation_id}/rotate",
    response_model=SecretRotationView,
    summary="Rotate now (Operator); a failure keeps the previous secret and shows status failed",
)
async def rotate_secret_rotation(
    caller: Operator, record: ExistingRotation, response: Response
) -> SecretRotationView:
    return _shown(await secret_runs.rotate(record, caller, trigger="manual"), response)


@router.post(
    "/{rotation_id}/sync",
    response_model=SecretRotationView,
    summary="Deliver the current secret to every destination now (Operator)",
)
async def sync_secret_rotation(
    caller: Operator, record: ExistingRotation, response: Response
) -> SecretRotationView:
    return _shown(await secret_runs.sync(record, caller), response)


@router.get(
    "/{rotation_id}/current",
    response_model=CurrentSecret,
    summary="The current secret (Operator, audited, never cached): the only response that carries it",
)
async def current_secret(caller: Operator, record: ExistingRotation, response: Response) -> CurrentSecret:
    from rotation.secret_engine import RESOURCE, current_value

    value = await current_value(record)
    response.headers["Cache-Control"] = "no-store"
    if value is None:
        raise NotFound("the secret rotation has no current secret yet", code="no-current-secret")
    await audit.record(
        caller,
        "secret-rotation.read-current",
        RESOURCE,
        record.id,
        detail=f"keyId={record.client_secret_key_id}",
    )
    return CurrentSecret(
        client_id=record.application_id,
        client_secret=value,
        key_id=record.client_secret_key_id,
        expires_at=record.current_expires_at,
    )
