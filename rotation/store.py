"""Rotation state in Table Storage: one row per connection plus a time-ordered due index.

Tables (logical names; `core.tables` adds the deployment prefix):

- `Rotations`: PartitionKey = connection id, RowKey = "rotation". The schedule, the outcome of
  the last attempt and, while a rotation is in flight, the state machine's step and what it
  touched (run id, the new credential's display name and Key ID, the old Key ID). Only Key IDs
  and secret *names* are stored, never a secret value.
- `RotationDue`: PartitionKey = "due", RowKey = `{nextRotationAt ISO}_{connectionId}`. A hint
  that the connection is due at that time, so the timer reads only the rows whose RowKey is
  <= now (a range scan of one partition) instead of every connection. The `Rotations` row is
  the truth: the index entry for a new time is written before the row and the old entry is
  deleted after it, so an enabled rotation always has an entry; an entry that no longer
  matches its row is deleted when the timer comes across it.
- `RotationDue`, PartitionKey = "cleanup", RowKey = connection id: the connection's row lists
  broker-made Key IDs still to be removed from the app (`pendingRemovalKeyIds`, e.g. the secret
  a PATCH replaced when removePassword failed). Written before the row, deleted after the list
  is empty; the reconciler reads this partition only (the timer's range reads never see it).

The new secret waits in the secret store under `rotation-{id}-pending-{runId}` between
`addPassword` and the switch of the connection to it, so a crash there can be finished, not
only undone; the name is deleted when the run ends (one name per run, so no soft-deleted name
is ever written again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator

from core import clock, records, tables

INDEX_PK = "due"
CLEANUP_PK = "cleanup"
ROW_KEY = "rotation"
_HIGH = "~"  # sorts after every character of a connection id


def index_key(next_rotation_at: str, connection_id: str) -> str:
    return f"{next_rotation_at}_{connection_id}"


class RotationRecord(records.Record, table="Rotations", pk="connection_id", rk="row_key"):
    """One connection's rotation row."""

    connection_id: str
    row_key: str = ROW_KEY
    enabled: bool = False
    client_secret_key_id: str = ""
    interval_days: int | None = None
    rotate_at: str | None = None
    time_zone: str = "UTC"
    app_object_id: str = ""
    broker_owned: bool = False  # the current secret was made by the broker (removed on delete)
    # The connection's credential revision whose secret is `client_secret_key_id`: a rotation only
    # switches a connection still at the revision it planned from (one writer per connection).
    connection_rev: str | None = None
    last_rotated_at: str | None = None
    next_rotation_at: str | None = None
    slot_at: str | None = None  # the scheduled slot being served, for the next slot's arithmetic
    status: str = "scheduled"  # scheduled | failed | disabled | deleting (in flight: `step` is set)
    last_error: str | None = None
    failures: int = 0
    # The state machine: '' (idle) | planned | added | verified | stored
    step: str = ""
    step_at: str | None = None
    run_id: str | None = None
    trigger: str | None = None  # create | schedule | manual
    actor_id: str | None = None
    actor_name: str | None = None
    new_display_name: str | None = None
    new_key_id: str | None = None
    old_key_id: str | None = None
    new_end_at: str | None = None
    # Broker-made Key IDs no longer in use that are still to be removed from the app; recorded
    # before the removePassword that should remove them.
    pending_removal_key_ids: list[str] = Field(default_factory=list)
    index_key: str | None = None  # the RotationDue RowKey currently pointing at this row
    # Where this kind of row is indexed in `RotationDue` (secret rotations use their own partition).
    DUE_PARTITION: ClassVar[str] = INDEX_PK
    # The new secret while this process holds it (saves reading it back); never written to the table.
    _pending_secret: str | None = PrivateAttr(default=None)

    @field_validator("pending_removal_key_ids", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """Rows written before the typed records hold a comma-separated string."""
        return [k for k in value.split(",") if k] if isinstance(value, str) else value

    @property
    def pending_secret(self) -> str | None:
        return self._pending_secret

    @pending_secret.setter
    def pending_secret(self, value: str | None) -> None:
        self._pending_secret = value

    def pending_removals(self) -> list[str]:
        return list(self.pending_removal_key_ids)

    def set_pending_removals(self, key_ids: list[str] | set[str]) -> None:
        self.pending_removal_key_ids = sorted({k.lower() for k in key_ids if k})

    @property
    def subject_id(self) -> str:
        """The id the row is indexed, audited and named by (the connection's, or a secret rotation's)."""
        return self.connection_id

    def due_at(self) -> datetime | None:
        return datetime.fromisoformat(self.next_rotation_at) if self.next_rotation_at else None


class DueEntry(records.Record, table="RotationDue", pk="partition", rk="key"):
    """A `RotationDue` hint: the connection is due at the time its RowKey starts with."""

    partition: str = INDEX_PK
    key: str
    connection_id: str = ""


class CleanupEntry(records.Record, table="RotationDue", pk="partition", rk="connection_id"):
    """A `RotationDue` cleanup entry: the connection's row lists Key IDs still to be removed."""

    partition: str = CLEANUP_PK
    connection_id: str
    since: datetime | None = None


TABLE = RotationRecord.TABLE
INDEX_TABLE = DueEntry.TABLE


def _wanted_index(record: RotationRecord) -> str | None:
    if not record.enabled or not record.next_rotation_at:
        return None
    return index_key(record.next_rotation_at, record.subject_id)


def _entry(record: RotationRecord, key: str) -> DueEntry:
    return DueEntry(partition=record.DUE_PARTITION, key=key, connection_id=record.subject_id)


async def load(connection_id: str) -> RotationRecord | None:
    return await records.get(RotationRecord, connection_id, ROW_KEY)


async def managed_key_ids() -> list[str]:
    """Key IDs a connection rotation will replace: the current secret of every enabled rotation
    and the new one of a run in flight (core.managed_keys, for the inventory's `managedBy`)."""
    rows = tables.query(RotationRecord.TABLE, "RowKey eq @rk", {"rk": ROW_KEY})
    found: list[str] = []
    async for row in rows:
        record = RotationRecord.from_row(row)
        if record.enabled and record.status != "deleting":
            found += [key for key in (record.client_secret_key_id, record.new_key_id) if key]
    return found


async def create(record: RotationRecord) -> RotationRecord:
    """Insert a new rotation row (and its index entry first); `RowExists` if it exists."""
    wanted = _wanted_index(record)
    if wanted:
        await records.upsert(_entry(record, wanted))
    record.index_key = wanted
    return _keep_secret(record, await records.insert(record))


async def save(record: RotationRecord) -> RotationRecord:
    """Write the row back if nobody changed it since it was read (`ConcurrencyConflict` otherwise).

    Moves the due index along: new entry before the row, old entry after it.
    """
    old_index = record.index_key
    wanted = _wanted_index(record)
    if wanted and wanted != old_index:
        await records.upsert(_entry(record, wanted))
    record.index_key = wanted
    try:
        saved = _keep_secret(record, await records.replace(record))
    except tables.ConcurrencyConflict:
        record.index_key = old_index
        raise
    if old_index and old_index != wanted:
        await drop_index(old_index, record.DUE_PARTITION)
    return saved


def _keep_secret(record: RotationRecord, saved: RotationRecord) -> RotationRecord:
    saved.pending_secret = record.pending_secret
    return saved


async def remove(record: RotationRecord) -> None:
    """Delete the row (only if unchanged since read) and its index entries."""
    await records.delete(record)
    if record.index_key:
        await drop_index(record.index_key, record.DUE_PARTITION)
    if record.pending_removals():
        await unmark_cleanup(record.connection_id)


async def mark_cleanup(connection_id: str) -> None:
    """Index the connection for the reconciler's cleanup (before the row lists the Key IDs)."""
    await records.upsert(CleanupEntry(connection_id=connection_id, since=clock.now()))


async def unmark_cleanup(connection_id: str) -> None:
    """Drop the cleanup entry (after the row's list is empty)."""
    await records.delete(CleanupEntry(connection_id=connection_id), conditional=False)


async def cleanups(*, limit: int) -> list[CleanupEntry]:
    """The cleanup entries: connections with Key IDs pending removal."""
    rows = tables.query(INDEX_TABLE, "PartitionKey eq @pk", {"pk": CLEANUP_PK}, limit=limit)
    return [CleanupEntry.from_row(row) async for row in rows]


async def due(now: datetime, *, limit: int, partition: str = INDEX_PK) -> list[DueEntry]:
    """The index entries due at `now`, oldest first, reading only those."""
    bound = f"{clock.isoformat(now)}_{_HIGH}"
    rows = tables.query(
        INDEX_TABLE,
        "PartitionKey eq @pk and RowKey le @bound",
        {"pk": partition, "bound": bound},
        select=["PartitionKey", "RowKey", "connectionId"],
        page_size=min(limit, 1000),
        limit=limit,
    )
    return [DueEntry.from_row(row) async for row in rows]


async def drop_index(key: str, partition: str = INDEX_PK) -> None:
    """Delete an index entry that no longer matches its row."""
    await records.delete(DueEntry(partition=partition, key=key), conditional=False)
