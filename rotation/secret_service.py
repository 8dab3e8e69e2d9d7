"""Secret rotations: create, read, PATCH and delete. Every precondition (the body, the lifetime,
the connection, the target read through Graph with the connection's credentials, each destination
reached once with the credentials that will write) is checked before any side effect."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from core import audit, clock, records, tables
from core.connection_seam import ConnectionFacts, access
from core.errors import Conflict, FieldError, NotFound, PreconditionFailed, Problem, Unprocessable
from core.secret_store import secret_store
from rotation import schedule, secret_runs, store
from rotation.azure_steps import KIND, describe_error, get_application, graph_status, remove_password
from rotation.destinations import destination_id, validate_all
from rotation.rotator import in_flight, pending_name
from rotation.secret_engine import RESOURCE, access_for, marker_prefix
from rotation.secret_models import SecretRotationCreate, SecretRotationPatch, lifetime_days
from rotation.secret_records import SecretRotationRecord, load, value_name

if TYPE_CHECKING:
    from core.auth import Caller

PERMISSION_FIX = (
    "grant the connection's app Application.ReadWrite.All, or Application.ReadWrite.OwnedBy and make "
    "it an owner of the target app"
)


async def get(rotation_id: str) -> SecretRotationRecord:
    record = await load(rotation_id)
    if record is None:
        raise NotFound(f"no secret rotation {rotation_id}", code="secret-rotation-not-found")
    return record


async def list_all() -> list[SecretRotationRecord]:
    rows = tables.query(SecretRotationRecord.TABLE, "PartitionKey ne ''", {})
    return [SecretRotationRecord.from_row(row) async for row in rows]


async def _connection(connection_id: str) -> ConnectionFacts:
    try:
        return await access().facts(KIND, connection_id)
    except NotFound:
        raise Unprocessable(
            "the connection is not an Azure Client Secrets connection",
            [FieldError("connectionId", "give the id of an Azure Client Secrets connection (any method)")],
        ) from None


async def _target_object_id(connection: ConnectionFacts, application_id: str) -> str:
    """Read the target through Graph as the connection: its object id, or a 422 naming the fix."""
    if application_id.lower() == connection.client_id.lower():
        raise Unprocessable(
            "the target is the connection's own app",
            [
                FieldError(
                    "applicationId",
                    "is the connection's own app: set the connection's rotation block instead "
                    "(PATCH /api/v1/app-connections/azure-client-secrets/{id} with `rotation`)",
                )
            ],
        )
    try:
        app = await get_application(connection.id, application_id)
    except Exception as error:
        status, detail = graph_status(error), describe_error(error)
        if status == 404:
            raise Unprocessable(
                "the target app was not found in the connection's tenant",
                [FieldError("applicationId", f"no app registration {application_id} here: {detail}")],
            ) from None
        if status in (401, 403):
            raise Unprocessable(
                "the connection may not manage the target app",
                [FieldError("connectionId", f"{PERMISSION_FIX}: {detail}")],
            ) from None
        if status and status < 500 and not isinstance(error, Problem):
            raise Unprocessable(
                "the target app could not be read", [FieldError("applicationId", detail)]
            ) from None
        raise
    assert app.id
    return str(app.id)


async def create(body: SecretRotationCreate, caller: Caller) -> SecretRotationRecord:
    """Validate everything, store the rotation, then run its first rotation at once."""
    lifetime = lifetime_days(body.interval_days, body.secret_lifetime_days)
    connection = await _connection(body.connection_id)
    object_id = await _target_object_id(connection, str(body.application_id))
    if body.destinations:
        await validate_all(body.destinations, access_for)
    record = SecretRotationRecord(
        id=str(uuid.uuid4()),
        name=body.name,
        connection_id=connection.id,
        application_id=str(body.application_id).lower(),
        app_object_id=object_id,
        enabled=True,
        interval_days=body.interval_days,
        rotate_at=body.rotate_at,
        time_zone=body.time_zone,
        secret_lifetime_days=lifetime,
        destinations=[d.model_dump(mode="json", by_alias=True) for d in body.destinations],
        created_at=clock.isoformat(clock.now()),
    )
    record = await records.insert(record)
    await audit.record(
        caller, "secret-rotation.create", RESOURCE, record.id, detail=f"app={record.application_id}"
    )
    return await secret_runs.rotate(record, caller, trigger="create")


def check_etag(record: SecretRotationRecord, if_match: str | None) -> None:
    if if_match is not None and if_match.strip() not in {record.etag, "*"}:
        raise PreconditionFailed(
            "the secret rotation changed since you read it (If-Match does not match its ETag); GET it, retry",
            code="etag-mismatch",
        )


def _busy(record: SecretRotationRecord) -> None:
    if record.step or in_flight(record):
        raise Conflict(
            "a rotation of this secret is in flight; try again when it has finished",
            code="rotation-in-flight",
        )


async def update(
    rotation_id: str, body: SecretRotationPatch, caller: Caller, *, if_match: str | None
) -> SecretRotationRecord:
    record = await get(rotation_id)
    check_etag(record, if_match)
    _busy(record)
    given = body.model_dump(exclude_unset=True)
    interval = body.interval_days or record.interval_days or 1
    lifetime_given = body.secret_lifetime_days
    if lifetime_given is None and "interval_days" in given:
        lifetime_given = max(record.secret_lifetime_days, 2 * interval + 3)
    lifetime = lifetime_days(interval, lifetime_given or record.secret_lifetime_days)
    await _target_object_id(await _connection(record.connection_id), record.application_id)
    if body.destinations is not None:
        await validate_all(body.destinations, access_for)
        record.destinations = [d.model_dump(mode="json", by_alias=True) for d in body.destinations]
        ids = {destination_id(d) for d in body.destinations}
        record.destination_states = [s for s in record.destination_states if s.id in ids]
    record.name = body.name or record.name
    record.secret_lifetime_days = lifetime
    schedule_changed = any(k in given for k in ("interval_days", "rotate_at", "time_zone"))
    record.interval_days = interval
    record.rotate_at = body.rotate_at or record.rotate_at
    record.time_zone = body.time_zone or record.time_zone
    if schedule_changed and record.status != "failed":
        since = datetime.fromisoformat(record.last_rotated_at) if record.last_rotated_at else clock.now()
        rotate_at = schedule.parse_rotate_at(record.rotate_at or "00:00")
        upcoming = schedule.next_rotation(since, interval, rotate_at, schedule.zone(record.time_zone))
        record.next_rotation_at = clock.isoformat(upcoming)
    record = secret_runs.own(await store.save(record))  # the ETag it was read with: one writer
    await audit.record(caller, "secret-rotation.update", RESOURCE, record.id, detail=",".join(sorted(given)))
    if body.destinations:
        record = await secret_runs.sync(record, caller)
    return record


async def delete(rotation_id: str, caller: Caller, *, keep_secrets: bool, if_match: str | None) -> None:
    """Claim the row, remove every broker-marked password of this rotation from the target (tracked
    or not) unless `keep_secrets`, the values from the secret store, then the row."""
    record = await get(rotation_id)
    check_etag(record, if_match)
    _busy(record)
    record.status, record.step, record.step_at = "deleting", "deleting", clock.isoformat(clock.now())
    claimed = secret_runs.own(await store.save(record))
    key_ids = {k for k in (claimed.client_secret_key_id, claimed.previous_key_id) if k}
    key_ids.update(claimed.pending_removals())
    try:
        app = await get_application(claimed.connection_id, claimed.application_id)
        marked = {
            str(c.key_id).lower()
            for c in app.password_credentials or []
            if c.key_id and (c.display_name or "").startswith(marker_prefix(claimed.id))
        }
        if not keep_secrets:
            for key_id in sorted(marked):
                await remove_password(claimed, key_id)
        key_ids.update(marked)
    except Exception as error:
        claimed.status, claimed.step = "failed", ""
        claimed.last_error = f"delete: {describe_error(error)}"
        await store.save(claimed)
        await audit.record(
            caller, "secret-rotation.delete", RESOURCE, claimed.id, "failure", claimed.last_error
        )
        raise
    for key_id in sorted(key_ids):
        await secret_store().delete(value_name(claimed.id, key_id))
    if claimed.run_id:
        await secret_store().delete(pending_name(claimed))
    await store.remove(claimed)
    detail = f"keepSecrets={keep_secrets} keyIds={','.join(sorted(key_ids))}"
    await audit.record(caller, "secret-rotation.delete", RESOURCE, claimed.id, detail=detail)
