"""The secret-rotation API's bodies and views (pydantic at the edge). The schedule fields and their
rules are the connection rotation's (`ScheduleFields`); destinations are `rotation.destinations`'."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import Field

from core.errors import FieldError, Unprocessable
from core.models import ApiModel
from rotation.destinations import DestinationList, destination_id
from rotation.secret_records import SecretRotationRecord
from rotation.service import OutcomeView, ScheduleFields


class SecretRotationCreate(ScheduleFields):
    name: str = Field(min_length=1, max_length=128)
    connection_id: str = Field(
        min_length=1, max_length=100, description="an Azure Client Secrets connection that may write the app"
    )
    application_id: UUID = Field(description="the target app registration's application (client) ID")
    interval_days: int = Field(ge=1, le=365)
    rotate_at: str = Field(description="24-hour local time HH:MM", examples=["02:00"])
    secret_lifetime_days: int | None = Field(
        default=None, ge=1, le=3650, description="default 2 x intervalDays + 3; must exceed intervalDays"
    )
    destinations: DestinationList = Field(default_factory=list)


class SecretRotationPatch(ScheduleFields):
    """Omitted fields keep their value; the connection and the target cannot change."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    time_zone: str | None = None  # type: ignore[assignment]
    secret_lifetime_days: int | None = Field(default=None, ge=1, le=3650)
    destinations: DestinationList | None = None


def lifetime_days(interval_days: int, given: int | None) -> int:
    """The secret's lifetime: given, or 2 x interval + 3; a 422 unless it exceeds the interval."""
    lifetime = given if given is not None else 2 * interval_days + 3
    if lifetime <= interval_days:
        raise Unprocessable(
            "the secret would expire before the next rotation replaces it",
            [
                FieldError(
                    "secretLifetimeDays",
                    f"must exceed intervalDays ({interval_days}); omit it for {2 * interval_days + 3}",
                )
            ],
        )
    return lifetime


class SecretRotationView(OutcomeView):
    """A secret rotation as read and listed: metadata only, never a secret."""

    id: str
    name: str
    connection_id: str
    application_id: str
    interval_days: int | None
    rotate_at: str | None
    time_zone: str
    secret_lifetime_days: int
    current_key_id: str | None = None
    previous_key_id: str | None = None
    current_expires_at: str | None = None
    status: str
    waiting_for_delivery_key_ids: list[str] = Field(
        default_factory=list,
        description="older broker secrets kept on the app because a destination still holds them",
    )
    destinations: list[dict[str, Any]] = Field(default_factory=list)
    created_at: str | None = None


class CurrentSecret(ApiModel):
    client_id: str
    client_secret: str
    key_id: str
    expires_at: str | None


def status_of(record: SecretRotationRecord) -> str:
    if record.step and record.status == "rotating":
        return "rotating"
    if record.status in ("failed", "deleting"):
        return record.status
    if record.pending_removals():
        return "waiting-for-delivery"
    return record.status


def view_of(record: SecretRotationRecord) -> SecretRotationView:
    from rotation.secret_engine import destinations_of

    states = {s.id: s for s in record.destination_states}
    shown: list[dict[str, Any]] = []
    for dest in destinations_of(record):
        state = states.get(destination_id(dest))
        item = dest.model_dump(mode="json", by_alias=True, exclude_none=True)
        item["id"] = destination_id(dest)
        item.update(
            state.model_dump(mode="json", by_alias=True, exclude={"id", "type"})
            if state
            else {"status": "pending"}
        )
        shown.append(item)
    return SecretRotationView(
        **record.model_dump(include=set(SecretRotationView.model_fields) - {"status", "destinations"}),
        current_key_id=record.client_secret_key_id or None,
        status=status_of(record),
        waiting_for_delivery_key_ids=record.pending_removals(),
        destinations=shown,
    )
