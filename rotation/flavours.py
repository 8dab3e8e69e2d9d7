"""What differs between the two kinds of rotation that run through the one state machine.

`rotation.rotator` is the state machine (intent before each Azure call, claims, deadlines,
rollback, backoff); a `Flavour` supplies what is particular to the record it drives: which app
is rotated (a connection's own app, or a secret rotation's target), how the new password is named
and how long it lives, how it becomes current (the connection's conditional switch, or delivery
to destinations), what is retired afterwards, and the audit resource and events. The connection's
flavour is here; a secret rotation's lives in `rotation.secret_engine` and registers itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from core import clock, events
from core.connection_seam import ConnectionFacts, RevisionMoved, access
from rotation.azure_steps import KIND, RotationError, facts, remove_password

if TYPE_CHECKING:
    from rotation.store import RotationRecord

log = logging.getLogger(__name__)

DISPLAY_PREFIX = "azure-credential-broker"  # the broker's marker on every password it adds
# A connection's new secret lives until its next planned rotation plus this margin, so that a few
# failed attempts (alerted on) do not let it expire, and a forgotten one does not live forever.
END_DATE_GRACE = timedelta(days=14)


class Superseded(RotationError):
    """The connection's credentials changed (a PATCH) after this run planned: it must not switch."""


@dataclass(frozen=True)
class Flavour:
    resource: str  # the audit resource type of the rotation's entries
    app_of: Callable[[RotationRecord], Awaitable[tuple[str, str]]]  # (tenant, client id) rotated
    end_of: Callable[[RotationRecord, datetime, datetime | None], datetime]  # (record, now, next slot)
    display_name: Callable[[RotationRecord, datetime], str]
    make_current: Callable[[RotationRecord, str], Awaitable[None]]  # verified -> stored
    retire: Callable[[RotationRecord], Awaitable[None]]  # stored -> done, before the bookkeeping
    finish: Callable[[RotationRecord], None]  # the key bookkeeping of a success
    succeeded: Callable[[RotationRecord, str | None, str | None], None]  # (record, trigger, key id)
    failed: Callable[[RotationRecord, str | None, str, str, int], None]  # (trigger, step, error, n)
    check_begin: Callable[[RotationRecord], Awaitable[None]]


_flavours: dict[type, Flavour] = {}


def register(record_type: type, flavour: Flavour) -> None:
    _flavours[record_type] = flavour


def flavour_of(record: RotationRecord) -> Flavour:
    return _flavours.get(type(record), CONNECTION)


# ---------------------------------------------------------------- a connection's own secret


async def _connection_app(record: RotationRecord) -> tuple[str, str]:
    connection = await facts(record.connection_id)
    return connection.tenant_id, connection.client_id


def _connection_end(record: RotationRecord, now: datetime, upcoming: datetime | None) -> datetime:
    return (upcoming or now + timedelta(days=record.interval_days or 30)) + END_DATE_GRACE


def _connection_name(record: RotationRecord, now: datetime) -> str:
    return f"{DISPLAY_PREFIX} {clock.isoformat(now)} {record.run_id}"


async def _switch(record: RotationRecord, secret: str) -> None:
    # One writer per connection: the switch is conditional on the connection's credential
    # revision this run planned from; a PATCH that changed it meanwhile wins (RevisionMoved).
    try:
        record.connection_rev = await access().switch_client_secret(
            KIND,
            record.connection_id,
            secret,
            from_rev=record.connection_rev or "",
            key_id=record.new_key_id or "",
        )
    except RevisionMoved:
        raise Superseded(
            "the connection's credentials changed during the rotation (a PATCH); the new secret is "
            "removed and the connection keeps the one it was given"
        ) from None


async def _remove_old(record: RotationRecord) -> None:
    if record.old_key_id and record.old_key_id != record.new_key_id:
        await remove_password(record, record.old_key_id)


def _connection_finish(record: RotationRecord) -> None:
    record.client_secret_key_id = record.new_key_id or record.client_secret_key_id
    record.broker_owned = True


def _connection_succeeded(record: RotationRecord, trigger: str | None, key_id: str | None) -> None:
    events.emit(
        "rotation.succeeded",
        connectionId=record.connection_id,
        trigger=trigger,
        keyId=key_id,
        nextRotationAt=record.next_rotation_at,
    )


def _connection_failed(record: RotationRecord, trigger: str | None, step: str, error: str, n: int) -> None:
    events.emit(
        "rotation.failed",
        level=logging.WARNING,
        connectionId=record.connection_id,
        trigger=trigger,
        step=step,
        error=error,
        failures=n,
        retryAt=record.next_rotation_at,
    )


async def _connection_begin(record: RotationRecord) -> None:
    from core.errors import Conflict

    connection = await facts(record.connection_id)
    if connection.deleting:  # checked before the run adds anything to the app
        raise Conflict(
            f"connection {connection.id} is being deleted; send the DELETE again to finish it",
            code="connection-deleting",
        )
    if record.connection_rev is None:
        record.connection_rev = connection.credential_rev  # a row written before the one-writer rule
    elif record.connection_rev != connection.credential_rev:
        await _adopt(record, connection)


async def _adopt(record: RotationRecord, connection: ConnectionFacts) -> None:
    """Follow a credential change whose PATCH never updated this row (refused by a half-done run,
    or its worker died): the connection row names the Key ID of the secret it holds now. A broker
    secret the connection no longer uses is listed for removal in the same row write (`begin`'s)."""
    from core.errors import Conflict
    from rotation import cleanup

    if not connection.secret_key_id:
        raise Conflict(
            "the connection's client secret was replaced and the rotation does not know its Key ID; "
            'send PATCH with "rotation": {"clientSecretKeyId": "<Secret ID of the current secret>"}',
            code="rotation-not-configured",
        )
    previous, broker_owned = (record.client_secret_key_id or "").lower(), record.broker_owned
    record.client_secret_key_id = connection.secret_key_id.lower()
    record.connection_rev = connection.credential_rev
    record.broker_owned = False
    if broker_owned and previous:
        await cleanup.retire(record, previous)  # a no-op if it is the same Key ID
    log.info("rotation of %s follows the connection's new secret", record.connection_id)


CONNECTION = Flavour(
    resource="azure-client-secrets-connection",  # rotation is audited as the connection's events
    app_of=_connection_app,
    end_of=_connection_end,
    display_name=_connection_name,
    make_current=_switch,
    retire=_remove_old,
    finish=_connection_finish,
    succeeded=_connection_succeeded,
    failed=_connection_failed,
    check_begin=_connection_begin,
)
