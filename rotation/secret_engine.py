"""A secret rotation as a flavour of the one rotation state machine (`rotation.rotator`).

The machine records intent before each Azure call, adds the password once (marker with the
secret rotation's id and the run id), proves a token *for the target app*, and undoes a run that
failed before it became current. This module supplies what differs: "make current" delivers the
new secret to every destination (read back) and then makes it the current one, the previous one
staying valid; "retire" removes the broker's password before the previous one, unless a
destination still holds it (then the rotation waits for delivery and says so).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pydantic import SecretStr, TypeAdapter

from core import clock, events
from core.connection_seam import access
from core.secret_store import SecretMissing, secret_store
from rotation import flavours
from rotation.azure_steps import KIND, facts, remove_password
from rotation.destinations import (
    Access,
    AzureAccess,
    Delivery,
    Destination,
    DestinationList,
    DevOpsAccess,
    DevOpsVariableGroupDestination,
    SecretToDeliver,
)
from rotation.secret_records import SecretRotationRecord, value_name
from rotation.store import RotationRecord

RESOURCE = "secret-rotation"
_DESTINATIONS: TypeAdapter[list[Destination]] = TypeAdapter(DestinationList)


def marker_prefix(rotation_id: str) -> str:
    """What every password this secret rotation adds is named with (delete finds them by it)."""
    return f"{flavours.DISPLAY_PREFIX} secret-rotation {rotation_id} "


def destinations_of(record: SecretRotationRecord) -> list[Destination]:
    return _DESTINATIONS.validate_python(record.destinations)


async def access_for(dest: Destination) -> Access:
    """The credentials a destination is written with: its connection's, else the broker's identity."""
    if isinstance(dest, DevOpsVariableGroupDestination):
        organization, authorization = await access().devops_authorization(dest.connection_id)
        return DevOpsAccess(organization, authorization)
    if dest.connection_id:
        app = await access().app_access(KIND, dest.connection_id)
        return AzureAccess(app.credential, f"the app {app.client_id} of connection {dest.connection_id}")
    from core.azure_clients import broker_credential

    return AzureAccess(await broker_credential())


def to_deliver(
    record: SecretRotationRecord, secret: str, key_id: str, expires: str | None
) -> SecretToDeliver:
    expires_on = datetime.fromisoformat(expires) if expires else clock.now() + timedelta(days=1)
    return SecretToDeliver(SecretStr(secret), key_id, record.application_id, expires_on)


def held_key_ids(record: SecretRotationRecord) -> set[str]:
    """Key IDs some destination still holds (its last successful delivery)."""
    return {s.last_synced_key_id.lower() for s in record.destination_states if s.last_synced_key_id}


def _own(record: RotationRecord) -> SecretRotationRecord:
    assert isinstance(record, SecretRotationRecord)
    return record


async def retire_released(record: SecretRotationRecord) -> None:
    """Remove pending Key IDs (and their values) no destination holds; report the ones still held."""
    held = held_key_ids(record)
    keep = {(record.client_secret_key_id or "").lower(), (record.previous_key_id or "").lower()}
    waiting = []
    for key_id in record.pending_removals():
        if key_id in keep:
            continue
        if key_id in held:
            waiting.append(key_id)
            continue
        await remove_password(record, key_id)
        await secret_store().delete(value_name(record.id, key_id))
    record.set_pending_removals(waiting)
    if waiting:
        events.emit(
            "secret_rotation.waiting_for_delivery",
            level=logging.WARNING,
            **_event_ids(record),
            keyIds=waiting,
        )


async def current_value(record: SecretRotationRecord) -> str | None:
    if not record.client_secret_key_id:
        return None
    try:
        return await secret_store().get(value_name(record.id, record.client_secret_key_id))
    except SecretMissing:
        return None


class SecretRotationFlavour(flavours.Flavour):
    """A secret rotation: the new secret is delivered to its destinations, the previous one stays."""

    resource = RESOURCE
    event_prefix = "secret_rotation"

    async def app_of(self, record: RotationRecord) -> tuple[str, str]:
        return (await facts(record.connection_id)).tenant_id, _own(record).application_id

    def end_of(self, record: RotationRecord, now: datetime, upcoming: datetime | None) -> datetime:
        return now + timedelta(days=_own(record).secret_lifetime_days)

    def display_name(self, record: RotationRecord, now: datetime) -> str:
        return f"{marker_prefix(_own(record).id)}{record.run_id}"

    async def make_current(self, record: RotationRecord, secret: str) -> None:
        """Keep the value, deliver it everywhere (read back), then make it current; repeatable."""
        own = _own(record)
        assert own.new_key_id
        await secret_store().set(value_name(own.id, own.new_key_id), secret)
        deliver = to_deliver(own, secret, own.new_key_id, own.new_end_at)
        dests = destinations_of(own)
        if dests:
            delivery = Delivery(own.id, dests, access_for, deliver)
            own.destination_states = await delivery.deliver_all(own.destination_states)
        if own.client_secret_key_id != own.new_key_id:  # not yet switched (a resumed step did it)
            retiring = own.previous_key_id
            own.previous_key_id = own.client_secret_key_id or None
            own.client_secret_key_id = own.new_key_id
            own.current_expires_at = own.new_end_at
            if retiring:
                own.set_pending_removals({*own.pending_removals(), retiring})

    async def retire(self, record: RotationRecord) -> None:
        """Remove the broker's passwords before the previous one that no destination holds any more."""
        await retire_released(_own(record))

    def finish(self, record: RotationRecord) -> None:
        record.broker_owned = True

    async def check_begin(self, record: RotationRecord) -> None:
        """Nothing to check beyond the row's claim: the target has no revision of its own."""

    def event_ids(self, record: RotationRecord) -> dict[str, str]:
        return _event_ids(record)


def _event_ids(record: RotationRecord) -> dict[str, str]:
    return {"secretRotationId": record.subject_id, "appId": _own(record).application_id}


flavours.register(SecretRotationRecord, SecretRotationFlavour())
