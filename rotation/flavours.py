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
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

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


class Flavour(ABC):
    """One kind of rotation: a subclass per kind, one instance registered for its record type."""

    resource: ClassVar[str]  # the audit resource type of the rotation's entries
    event_prefix: ClassVar[str]  # its events are `{prefix}.succeeded` and `{prefix}.failed`

    @abstractmethod
    async def app_of(self, record: RotationRecord) -> tuple[str, str]:
        """(tenant, client id) of the app rotated."""

    @abstractmethod
    def end_of(self, record: RotationRecord, now: datetime, upcoming: datetime | None) -> datetime:
        """When the new password ends (`upcoming`: the next planned slot)."""

    @abstractmethod
    def display_name(self, record: RotationRecord, now: datetime) -> str: ...

    @abstractmethod
    async def make_current(self, record: RotationRecord, secret: str) -> None:
        """verified -> stored."""

    @abstractmethod
    async def retire(self, record: RotationRecord) -> None:
        """stored -> done, before the bookkeeping."""

    @abstractmethod
    def finish(self, record: RotationRecord) -> None:
        """The key bookkeeping of a success."""

    @abstractmethod
    async def check_begin(self, record: RotationRecord) -> None:
        """Refuse (raise) a run that must not start now."""

    @abstractmethod
    def event_ids(self, record: RotationRecord) -> dict[str, str]:
        """The fields that name the rotation in its events."""

    def succeeded(self, record: RotationRecord, trigger: str | None, key_id: str | None) -> None:
        fields = {"keyId": key_id, "nextRotationAt": record.next_rotation_at}
        self._emit("succeeded", logging.INFO, record, trigger, fields)

    def failed(
        self, record: RotationRecord, trigger: str | None, step: str, error: str, failures: int
    ) -> None:
        fields = {"step": step, "error": error, "failures": failures, "retryAt": record.next_rotation_at}
        self._emit("failed", logging.WARNING, record, trigger, fields)

    def _emit(
        self, outcome: str, level: int, record: RotationRecord, trigger: str | None, fields: dict[str, Any]
    ) -> None:
        ids = self.event_ids(record)
        events.emit(f"{self.event_prefix}.{outcome}", level=level, **ids, trigger=trigger, **fields)


_flavours: dict[type, Flavour] = {}


def register(record_type: type, flavour: Flavour) -> None:
    _flavours[record_type] = flavour


def flavour_of(record: RotationRecord) -> Flavour:
    return _flavours.get(type(record), CONNECTION)


# ---------------------------------------------------------------- a connection's own secret


class ConnectionFlavour(Flavour):
    """A connection's own client secret: the connection switches to the new one."""

    resource = "azure-client-secrets-connection"  # rotation is audited as the connection's events
    event_prefix = "rotation"

    async def app_of(self, record: RotationRecord) -> tuple[str, str]:
        connection = await facts(record.connection_id)
        return connection.tenant_id, connection.client_id

    def end_of(self, record: RotationRecord, now: datetime, upcoming: datetime | None) -> datetime:
        return (upcoming or now + timedelta(days=record.interval_days or 30)) + END_DATE_GRACE

    def display_name(self, record: RotationRecord, now: datetime) -> str:
        return f"{DISPLAY_PREFIX} {clock.isoformat(now)} {record.run_id}"

    async def make_current(self, record: RotationRecord, secret: str) -> None:
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

    async def retire(self, record: RotationRecord) -> None:
        if record.old_key_id and record.old_key_id != record.new_key_id:
            await remove_password(record, record.old_key_id)

    def finish(self, record: RotationRecord) -> None:
        record.client_secret_key_id = record.new_key_id or record.client_secret_key_id
        record.broker_owned = True

    async def check_begin(self, record: RotationRecord) -> None:
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

    def event_ids(self, record: RotationRecord) -> dict[str, str]:
        return {"connectionId": record.connection_id}


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


CONNECTION = ConnectionFlavour()
