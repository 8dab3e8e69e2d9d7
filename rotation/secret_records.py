"""A secret rotation's row: the connection-rotation row's fields (the state machine's step, run,
Key IDs, schedule, outcome) plus the target app, the secret's lifetime, the destinations and their
delivery state, and the previous secret that stays valid until the next rotation.

`SecretRotations`: PartitionKey = secret rotation id, RowKey = "secret-rotation". Its due entries
share `RotationDue` with the connections' under PartitionKey `secret-due`. Secret values live in
the secret store only (`value_name`), one name per Key ID, deleted when that password is removed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from core import records, tables
from core.secret_store import secret_name
from rotation.destinations import DestinationState
from rotation.store import RotationRecord

ROW_KEY = "secret-rotation"
DUE_PARTITION = "secret-due"


class SecretRotationRecord(RotationRecord, table="SecretRotations", pk="id", rk="row_key"):
    """`client_secret_key_id` is the current secret's Key ID; `connection_id` the acting connection."""

    DUE_PARTITION: ClassVar[str] = DUE_PARTITION

    id: str
    row_key: str = ROW_KEY
    name: str = ""
    application_id: str = ""  # the target's client id (app_object_id is its object id)
    secret_lifetime_days: int = 0
    destinations: list[dict[str, Any]] = Field(default_factory=list)  # as validated (camelCase)
    destination_states: list[DestinationState] = Field(default_factory=list)
    current_expires_at: str | None = None
    previous_key_id: str | None = None
    created_at: str | None = None

    @property
    def subject_id(self) -> str:
        return self.id


def value_name(rotation_id: str, key_id: str) -> str:
    """The secret-store name of one password's value (one name per Key ID, never reused)."""
    return secret_name("secretrotation", rotation_id, key_id.lower())


async def load(rotation_id: str) -> SecretRotationRecord | None:
    return await records.get(SecretRotationRecord, rotation_id, ROW_KEY)


async def managed_key_ids() -> list[str]:
    """Key IDs a secret rotation will replace: current, previous and a run's new one (`managedBy`)."""
    rows = tables.query(SecretRotationRecord.TABLE, "RowKey eq @rk", {"rk": ROW_KEY})
    found: list[str] = []
    async for row in rows:
        record = SecretRotationRecord.from_row(row)
        if record.status != "deleting":
            keys = (record.client_secret_key_id, record.previous_key_id, record.new_key_id)
            found += [key for key in keys if key]
    return found
