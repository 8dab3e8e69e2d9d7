"""Rotation settings of a Client Secret connection: validate, schedule, describe.

rotation.hooks hands these to the generic connection service (through core.connection_seam),
which calls them on create, PATCH, read and delete; the rotator (rotation.rotator) does the
work; the timer (rotation.timer) drives it on schedule.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import Field, field_validator

from core import audit, clock
from core.errors import Conflict, FieldError, Unprocessable
from core.models import ApiModel, RequestModel
from rotation import schedule

if TYPE_CHECKING:
    from core.auth import Caller
    from core.connection_seam import ConnectionFacts
    from rotation.store import RotationRecord

log = logging.getLogger(__name__)

CLIENT_SECRET_METHOD = "client-secret"  # noqa: S105 - a method name, not a secret

Status = Literal["scheduled", "rotating", "failed", "disabled"]


class ScheduleFields(RequestModel):
    """The schedule of a rotation (a connection's, or a secret rotation's): every N days at a local
    time in an IANA zone. One set of rules for both."""

    interval_days: int | None = Field(default=None, ge=1, le=365)
    rotate_at: str | None = Field(default=None, description="24-hour local time HH:MM", examples=["02:00"])
    time_zone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/Berlin")

    @field_validator("rotate_at")
    @classmethod
    def _rotate_at(cls, value: str | None) -> str | None:
        if value is not None:
            schedule.parse_rotate_at(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        schedule.zone(value)
        return value


class RotationSettings(ScheduleFields):
    """The `rotation` block of a create/PATCH body. On PATCH, omitted fields keep their value."""

    enabled: bool
    client_secret_key_id: UUID | None = Field(
        default=None, description="Key ID (Secret ID) of the app's client secret the connection uses now"
    )


class OutcomeView(ApiModel):
    """When a rotation last succeeded, when it runs next, and why its last attempt failed: both kinds
    of rotation (a connection's, a secret rotation) show these alike."""

    last_rotated_at: str | None = None
    next_rotation_at: str | None = None
    last_error: str | None = None


class RotationView(OutcomeView):
    """The rotation block shown on a connection (never a secret)."""

    enabled: bool
    client_secret_key_id: str | None = None
    interval_days: int | None = None
    rotate_at: str | None = None
    time_zone: str = "UTC"
    status: Status = "disabled"
    pending_removal_key_ids: list[str] = Field(
        default_factory=list,
        description="Key IDs of broker-made secrets no longer in use whose removal from the app failed; "
        "the reconciler (and a delete of the connection) retries them",
    )


def view_of(record: RotationRecord) -> RotationView:
    """The API view of a stored rotation."""
    status: Status
    if not record.enabled:
        status = "disabled"
    elif record.status == "failed":
        status = "failed"
    else:
        status = "rotating" if record.step else "scheduled"
    return RotationView(
        enabled=record.enabled,
        client_secret_key_id=record.client_secret_key_id or None,
        interval_days=record.interval_days,
        rotate_at=record.rotate_at,
        time_zone=record.time_zone,
        last_rotated_at=record.last_rotated_at,
        next_rotation_at=record.next_rotation_at if record.enabled else None,
        status=status,
        last_error=record.last_error,
        pending_removal_key_ids=record.pending_removals(),
    )


def _require_complete(merged: dict[str, Any]) -> None:
    missing = [
        FieldError(f"rotation.{name}", "is required when rotation is enabled")
        for name, key in (
            ("clientSecretKeyId", "client_secret_key_id"),
            ("intervalDays", "interval_days"),
            ("rotateAt", "rotate_at"),
        )
        if not merged.get(key)
    ]
    if missing:
        raise Unprocessable("rotation settings are incomplete", missing)


def _in_flight() -> Conflict:
    return Conflict(
        "a rotation of this connection is in flight (or half-done and retried at nextRotationAt); "
        "change its settings or credentials when it has finished",
        code="rotation-in-flight",
    )


async def key_id_for_new_secret(
    connection_id: str, settings: RotationSettings | None, credentials: dict[str, Any] | None
) -> str | None:
    """Before a PATCH that sends a new client secret: the Key ID the rotation tracks from now on.

    None if the PATCH sends no client secret or names no Key ID. With rotation enabled (before or
    by this PATCH) the body must name the new secret's Key ID: the rotation would otherwise keep
    rotating (and remove) the previous one. A rotation in flight is a 409: it would switch the
    connection back to a secret it made. Checked before anything changes.
    """
    from rotation import store

    if not credentials or "clientSecret" not in credentials:
        return None
    existing = await store.load(connection_id)
    if existing is not None and existing.step:
        raise _in_flight()
    key_id = settings.client_secret_key_id if settings is not None else None
    enabled = settings.enabled if settings is not None else existing is not None and existing.enabled
    if key_id is None and enabled:
        raise Unprocessable(
            "the connection's client secret changes while automatic rotation is on, so the rotation "
            "must learn which secret it now rotates",
            [
                FieldError(
                    "rotation.clientSecretKeyId",
                    "is required when credentials.clientSecret changes and rotation is enabled: send "
                    '"rotation": {"enabled": true, "clientSecretKeyId": "<Secret ID of the new secret>"} '
                    "(the app's Certificates & secrets page shows it), or disable rotation",
                )
            ],
        )
    return str(key_id).lower() if key_id is not None else None


async def configure_rotation(
    connection: ConnectionFacts,
    settings: RotationSettings | None,
    caller: Caller,
    *,
    on_create: bool,
    secret_changed: bool = False,
) -> RotationView | None:
    """Apply a connection's rotation block (create or PATCH); the view to show, or None if never set.

    On create with rotation enabled, the Key ID is checked against the app's password
    credentials (422 naming `rotation.clientSecretKeyId` otherwise) and the first rotation runs
    right away (its failure is reported in the view and retried by the timer; the connection
    keeps its working secret). On PATCH the schedule changes from now on; enabling rotation on
    PATCH schedules the first rotation at the next rotate-at time instead of rotating at once.
    `secret_changed` (PATCH): the connection got a new client secret, so the stored Key ID is
    stale and only a Key ID in `settings` is kept (`key_id_for_new_secret` made sure of one
    when rotation is on); nothing is written if another PATCH has replaced the secret since. If
    the previous secret was broker-made, it is listed for removal in the same row write and then
    removed from the app (pending for the reconciler if that fails).
    """
    from rotation import azure_steps, cleanup, rotator, store
    from rotation.flavours import CONNECTION

    existing = None if on_create else await store.load(connection.id)
    if (
        secret_changed
        and (await azure_steps.facts(connection.id)).credential_rev != connection.credential_rev
    ):
        # A later PATCH replaced this one's secret (checked after the read, so its write of the row
        # makes our save a conflict): that PATCH records its own Key ID and revision.
        return None if existing is None else view_of(existing)
    if settings is None and secret_changed and existing is not None:
        settings = RotationSettings(enabled=existing.enabled)  # forget the previous Key ID
    if settings is None:
        return None if existing is None else view_of(existing)
    if connection.method != CLIENT_SECRET_METHOD:
        raise Unprocessable(
            "automatic rotation needs the client-secret method",
            [FieldError("rotation", "is only available for connections with method client-secret")],
        )
    if existing is not None and existing.step:
        raise _in_flight()
    merged = _merge(existing, settings, secret_changed=secret_changed)
    if settings.enabled:
        _require_complete(merged)
    key_id = merged.get("client_secret_key_id") or ""
    key_changed = existing is None or key_id.lower() != (existing.client_secret_key_id or "").lower()
    # The broker-made secret the connection used until now (only the broker knows its value).
    retired = (
        existing.client_secret_key_id
        if existing is not None and key_changed and existing.broker_owned and existing.client_secret_key_id
        else ""
    )
    if retired and not secret_changed:
        # The connection still uses the broker's secret: tracking another Key ID would leave it
        # on the app untracked (and rotate away a secret the connection does not use).
        raise Unprocessable(
            "the connection uses a client secret the broker made, so its Key ID is the broker's",
            [
                FieldError(
                    "rotation.clientSecretKeyId",
                    f"can only change together with credentials.clientSecret; the connection uses {retired}",
                )
            ],
        )
    app_object_id = existing.app_object_id if existing is not None else ""
    if settings.enabled and (key_changed or not app_object_id):
        app_object_id = await azure_steps.check_key_id(connection, key_id)

    now = clock.now()
    record = existing or store.RotationRecord(connection_id=connection.id)
    record.enabled = settings.enabled
    record.client_secret_key_id = key_id.lower()
    record.interval_days = merged.get("interval_days")
    record.rotate_at = merged.get("rotate_at")
    record.time_zone = merged.get("time_zone") or "UTC"
    record.app_object_id = app_object_id
    record.connection_rev = connection.credential_rev  # the revision whose secret is key_id
    if key_changed:
        record.broker_owned = False  # the caller's own secret, not one the broker made
    if retired:
        # Intent first: the same row write that switches the Key ID lists the old one for removal.
        record = await cleanup.retire(record, retired)
    if not settings.enabled:
        record.status = "disabled"
        record.next_rotation_at = None
        record.slot_at = None
    elif on_create:
        # The first rotation starts now. Its run is claimed in the same write that creates the row
        # (`begin(new_row=True)` below): a rotation timer running meanwhile finds it in flight, and
        # never begins a run of its own that this create would then collide with.
        record.next_rotation_at = clock.isoformat(now)
        record.status = "scheduled"
    else:
        record.next_rotation_at = clock.isoformat(_next_after_change(record))
        record.slot_at = None
        if record.status == "disabled":
            record.status = "scheduled"

    first_run = on_create and settings.enabled
    if first_run:
        record = await rotator.begin(record, caller, "create", new_row=True)
    elif existing is None:
        record = await store.create(record)
    else:
        record = await store.save(record)
    await audit.record(
        caller,
        "rotation.configure",
        CONNECTION.resource,
        connection.id,
        detail=f"enabled={record.enabled} intervalDays={record.interval_days} rotateAt={record.rotate_at} "
        f"timeZone={record.time_zone}",
    )
    if retired:
        # The connection already uses the new secret (the PATCH switched it); a failure here keeps
        # the Key ID listed for the reconciler and is shown in the view, the PATCH still succeeds.
        record = await cleanup.remove_retired(record, caller)
    if first_run:
        record = await rotator.run(record)
    return view_of(record)


def _merge(
    existing: RotationRecord | None, settings: RotationSettings, *, secret_changed: bool
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    if existing is not None:
        merged = {
            "client_secret_key_id": "" if secret_changed else existing.client_secret_key_id,
            "interval_days": existing.interval_days,
            "rotate_at": existing.rotate_at,
            "time_zone": existing.time_zone,
        }
    for name in settings.model_fields_set | ({"time_zone"} if existing is None else set()):
        value = getattr(settings, name)
        if name == "enabled":
            continue
        merged[name] = str(value) if isinstance(value, UUID) else value
    return merged


def _next_after_change(record: RotationRecord) -> datetime:
    """The next slot after a schedule change: from the last rotation, else the next rotate-at time."""
    assert record.interval_days is not None
    assert record.rotate_at is not None
    tz = schedule.zone(record.time_zone)
    at = schedule.parse_rotate_at(record.rotate_at)
    if record.last_rotated_at:
        last = datetime.fromisoformat(record.last_rotated_at)
        return schedule.next_rotation(last, record.interval_days, at, tz)
    return schedule.first_slot_at_or_after(clock.now(), at, tz)


async def describe_rotation(connection_id: str) -> RotationView | None:
    """The rotation block of a connection, or None if rotation was never configured."""
    from rotation import store

    record = await store.load(connection_id)
    return None if record is None else view_of(record)
