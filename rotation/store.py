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

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from core import clock, tables

TABLE = "Rotations"
INDEX_TABLE = "RotationDue"
INDEX_PK = "due"
CLEANUP_PK = "cleanup"
ROW_KEY = "rotation"
_HIGH = "~"  # sorts after every character of a connection id


def index_key(next_rotation_at: str, connection_id: str) -> str:
    return f"{next_rotation_at}_{connection_id}"


@dataclass
class RotationRecord:
    """One connection's rotation row (snake_case here, camelCase in the table)."""

    connection_id: str
    enabled: bool = False
    client_secret_key_id: str = ""
    interval_days: int | None = None
    rotate_at: str | None = None
    time_zone: str = "UTC"
    app_object_id: str = ""
    broker_owned: bool = False  # the current secret was made by the broker (removed on delete)
    last_rotated_at: str | None = None
    next_rotation_at: str | None = None
    slot_at: str | None = None  # the scheduled slot being served, for the next slot's arithmetic
    status: str = "scheduled"  # scheduled | failed | disabled (in flight: `step` is set)
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
    # Broker-made Key IDs no longer in use that are still to be removed from the app (comma-separated;
    # Table Storage has no list type). Recorded before the removePassword that should remove them.
    pending_removal_key_ids: str = ""
    index_key: str | None = None  # the RotationDue RowKey currently pointing at this row
    etag: str | None = field(default=None, compare=False)
    # The new secret while this process holds it (saves reading it back); never written to the table.
    pending_secret: str | None = field(default=None, compare=False, repr=False)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in fields(self):
            if item.name in ("connection_id", "etag", "pending_secret"):
                continue
            value = getattr(self, item.name)
            data[_camel(item.name)] = value
        return data

    @classmethod
    def from_row(cls, row: tables.Row) -> RotationRecord:
        known = {_camel(f.name): f.name for f in fields(cls)}
        values = {known[k]: v for k, v in row.data.items() if k in known}
        return cls(connection_id=row.pk, etag=row.etag, **values)

    def pending_removals(self) -> list[str]:
        return [k for k in self.pending_removal_key_ids.split(",") if k]

    def set_pending_removals(self, key_ids: list[str] | set[str]) -> None:
        self.pending_removal_key_ids = ",".join(sorted({k.lower() for k in key_ids if k}))

    def due_at(self) -> datetime | None:
        return datetime.fromisoformat(self.next_rotation_at) if self.next_rotation_at else None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _row(record: RotationRecord) -> tables.Row:
    return tables.Row(TABLE, record.connection_id, ROW_KEY, record.to_data(), record.etag)


def _wanted_index(record: RotationRecord) -> str | None:
    if not record.enabled or not record.next_rotation_at:
        return None
    return index_key(record.next_rotation_at, record.connection_id)


async def load(connection_id: str) -> RotationRecord | None:
    row = await tables.get(TABLE, connection_id, ROW_KEY)
    return None if row is None else RotationRecord.from_row(row)


async def create(record: RotationRecord) -> RotationRecord:
    """Insert a new rotation row (and its index entry first); `RowExists` if it exists."""
    wanted = _wanted_index(record)
    if wanted:
        await tables.upsert(INDEX_TABLE, INDEX_PK, wanted, {"connectionId": record.connection_id})
    record.index_key = wanted
    row = await tables.insert(TABLE, record.connection_id, ROW_KEY, record.to_data())
    record.etag = row.etag
    return record


async def save(record: RotationRecord) -> RotationRecord:
    """Write the row back if nobody changed it since it was read (`ConcurrencyConflict` otherwise).

    Moves the due index along: new entry before the row, old entry after it.
    """
    old_index = record.index_key
    wanted = _wanted_index(record)
    if wanted and wanted != old_index:
        await tables.upsert(INDEX_TABLE, INDEX_PK, wanted, {"connectionId": record.connection_id})
    record.index_key = wanted
    try:
        row = await tables.replace(_row(record))
    except tables.ConcurrencyConflict:
        record.index_key = old_index
        raise
    record.etag = row.etag
    if old_index and old_index != wanted:
        await tables.delete(INDEX_TABLE, INDEX_PK, old_index)
    return record


async def remove(record: RotationRecord) -> None:
    """Delete the row and its index entries."""
    await tables.delete(TABLE, record.connection_id, ROW_KEY)
    if record.index_key:
        await tables.delete(INDEX_TABLE, INDEX_PK, record.index_key)
    if record.pending_removals():
        await unmark_cleanup(record.connection_id)


async def mark_cleanup(connection_id: str) -> None:
    """Index the connection for the reconciler's cleanup (before the row lists the Key IDs)."""
    await tables.upsert(INDEX_TABLE, CLEANUP_PK, connection_id, {"since": clock.isoformat(clock.now())})


async def unmark_cleanup(connection_id: str) -> None:
    """Drop the cleanup entry (after the row's list is empty)."""
    await tables.delete(INDEX_TABLE, CLEANUP_PK, connection_id)


async def cleanups(*, limit: int) -> list[tuple[str, datetime | None]]:
    """(connection id, entry written at) of connections with Key IDs pending removal."""
    rows = tables.query(
        INDEX_TABLE,
        "PartitionKey eq @pk",
        {"pk": CLEANUP_PK},
        select=["PartitionKey", "RowKey", "since"],
        limit=limit,
    )
    found: list[tuple[str, datetime | None]] = []
    async for row in rows:
        since = row.data.get("since")
        found.append((row.rk, datetime.fromisoformat(since) if isinstance(since, str) else None))
    return found


async def due(now: datetime, *, limit: int) -> list[tuple[str, str]]:
    """(index RowKey, connection id) of entries due at `now`, oldest first, reading only those."""
    bound = f"{clock.isoformat(now)}_{_HIGH}"
    rows = tables.query(
        INDEX_TABLE,
        "PartitionKey eq @pk and RowKey le @bound",
        {"pk": INDEX_PK, "bound": bound},
        select=["PartitionKey", "RowKey", "connectionId"],
        page_size=min(limit, 1000),
        limit=limit,
    )
    return [(row.rk, str(row.data.get("connectionId") or row.rk.partition("_")[2])) async for row in rows]


async def drop_index(key: str) -> None:
    """Delete an index entry that no longer matches its row."""
    await tables.delete(INDEX_TABLE, INDEX_PK, key)
