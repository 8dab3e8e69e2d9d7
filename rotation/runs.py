"""Entry points of a connection's rotation: rotate now (create, manual), the timer's due entry,
and the reconciler's takeover of a stuck one. The state machine itself is rotation.rotator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from core import audit, events, tables
from core.errors import Conflict, NotFound
from rotation import store
from rotation.rotator import STUCK_AFTER, _parse, begin, in_flight, run, take_over
from rotation.store import RotationRecord

if TYPE_CHECKING:
    from core.auth import Caller
    from rotation.rotator import Trigger


async def rotate_now(connection_id: str, caller: Caller, *, trigger: Trigger) -> RotationRecord:
    """Rotate right away (manual): 409 if another rotation is in flight. A create's first run
    does not come here: it is claimed with the row (`service.configure_rotation`)."""
    record = await store.load(connection_id)
    if record is None or not record.client_secret_key_id or not record.app_object_id:
        raise Conflict(
            "rotation is not configured for this connection; set its rotation block first",
            code="rotation-not-configured",
        )
    if in_flight(record):
        raise Conflict(
            "a rotation of this connection is in flight; try again when it has finished",
            code="rotation-in-flight",
        )
    try:
        if record.step:
            return await take_over(record, caller)
        record = await begin(record, caller, trigger, move_due=trigger == "manual")
    except tables.ConcurrencyConflict:
        raise Conflict(
            "a rotation of this connection started meanwhile; try again when it has finished",
            code="rotation-in-flight",
        ) from None
    return await run(record)


Loader = Callable[[str], Awaitable[RotationRecord | None]]


async def process_due(
    connection_id: str,
    index_key: str,
    now: datetime,
    load: Loader = store.load,
    partition: str = store.INDEX_PK,
) -> str:
    """The timer's work on one due index entry; returns what happened (for the job summary).

    `load` and `partition` name the kind of row (a connection's rotation, or a secret rotation's)."""
    record = await load(connection_id)
    current = store.index_key(record.next_rotation_at or "", connection_id) if record else None
    if record is None or not record.enabled or current != index_key:
        # Not (or no longer) the row's entry. A young one may belong to a write in progress
        # (index entry first, row second), so only entries older than STUCK_AFTER are dropped.
        entry_at = _parse(index_key.partition("_")[0])
        if entry_at is not None and entry_at < now - STUCK_AFTER:
            await store.drop_index(index_key, partition)
        return "stale"
    if in_flight(record, now):
        return "busy"
    try:
        if record.step:
            record = await _resume(record)
            outcome = "resumed"
        else:
            due_at = record.due_at()
            if due_at is None or due_at > now:
                return "not_due"
            record = await begin(record, audit.SYSTEM, "schedule")
            record = await run(record)
            outcome = "rotated"
    except tables.ConcurrencyConflict:
        return "claimed_elsewhere"
    except Conflict:
        return "busy"
    except NotFound:
        # The connection was deleted under this row (a delete that died mid-way): nothing to rotate.
        await store.remove(record.model_copy(update={"etag": None}))
        return "stale"
    return "failed" if record.status == "failed" else outcome


async def recover_stuck(connection_id: str, now: datetime, load: Loader = store.load) -> str:
    """The reconciler's work on one connection: finish or undo a dead worker's rotation."""
    record = await load(connection_id)
    if record is None or not record.step or record.status != "rotating" or in_flight(record, now):
        return "ok"
    try:
        record = await _resume(record)
    except tables.ConcurrencyConflict:
        return "claimed_elsewhere"
    return "failed" if record.status == "failed" else "fixed"


async def _resume(record: RotationRecord) -> RotationRecord:
    """Take over a half-done rotation as the system; a dead worker's is reported (`reconcile.fixed`)."""
    dead_worker, from_step = record.status == "rotating", record.step
    record = await take_over(record, audit.SYSTEM)
    if dead_worker:
        events.emit(
            "reconcile.fixed",
            kind="rotation",
            connectionId=record.subject_id,
            fromStep=from_step,
            status=record.status,
        )
    return record
