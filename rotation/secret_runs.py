"""Entry points of a secret rotation: rotate (create, manual, the timer through `rotation.timer`),
sync the current secret to every destination, and the reconcile job's work (finish or undo half-done
runs, re-check destinations for drift and failed deliveries, then let go of secrets no destination
holds any more). The state machine is `rotation.rotator`, driven with the secret-rotation flavour."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from core import audit, clock, tables
from core.errors import Conflict
from rotation import runs, secret_engine, store
from rotation.destinations import Delivery
from rotation.rotator import STUCK_AFTER, begin, in_flight, run, take_over
from rotation.secret_records import DUE_PARTITION, SecretRotationRecord, load

if TYPE_CHECKING:
    from core.auth import Caller
    from rotation.rotator import Trigger
    from rotation.store import RotationRecord

MAX_RECHECKS = 200


def own(record: RotationRecord) -> SecretRotationRecord:
    assert isinstance(record, SecretRotationRecord)
    return record


async def rotate(record: SecretRotationRecord, caller: Caller, *, trigger: Trigger) -> SecretRotationRecord:
    """Rotate now (create, manual): 409 if a rotation is in flight. A failure is recorded, not raised."""
    if in_flight(record) or record.status == "deleting":
        raise Conflict(
            "a rotation of this secret is in flight; try again when it has finished",
            code="rotation-in-flight",
        )
    try:
        if record.step:
            return own(await take_over(record, caller))
        # The due index points at now, so a crash of this run is found by the timer and the reconciler.
        claimed = await begin(record, caller, trigger, move_due=True)
    except tables.ConcurrencyConflict:
        raise Conflict(
            "a rotation of this secret started meanwhile; try again when it has finished",
            code="rotation-in-flight",
        ) from None
    return own(await run(claimed))


async def sync(record: SecretRotationRecord, caller: Caller) -> SecretRotationRecord:
    """Deliver the current secret to every destination now (read back), then let go of older ones."""
    if record.step or in_flight(record):
        raise Conflict(
            "a rotation of this secret is in flight; try again when it has finished",
            code="rotation-in-flight",
        )
    value = await secret_engine.current_value(record)
    if value is None or not record.client_secret_key_id:
        raise Conflict(
            "the secret rotation has no current secret yet; rotate it first", code="no-current-secret"
        )
    secret = secret_engine.to_deliver(record, value, record.client_secret_key_id, record.current_expires_at)
    dests = secret_engine.destinations_of(record)
    delivery = Delivery(record.id, dests, secret_engine.access_for, secret)
    record.destination_states = await delivery.deliver_all(record.destination_states)
    await secret_engine.retire_released(record)
    try:
        saved = own(await store.save(record))
    except tables.ConcurrencyConflict:
        raise Conflict(
            "the secret rotation changed meanwhile; try again", code="rotation-in-flight"
        ) from None
    synced = sum(1 for s in saved.destination_states if s.status == "synced")
    await audit.record(
        caller,
        "secret-rotation.sync",
        secret_engine.RESOURCE,
        saved.id,
        detail=f"synced={synced}/{len(dests)}",
    )
    return saved


async def reconcile_secret_rotations() -> dict[str, Any]:
    """Finish or undo secret rotations stuck mid-way, then re-check destinations (drift, retries)."""
    now = clock.now()
    entries = await store.due(now - STUCK_AFTER, limit=500, partition=DUE_PARTITION)
    outcomes: Counter[str] = Counter()
    for entry in entries:
        outcomes[await runs.recover_stuck(entry.connection_id, now, load)] += 1
    rows = tables.query(
        SecretRotationRecord.TABLE, "destinations ne @empty", {"empty": "[]"}, limit=MAX_RECHECKS
    )
    for row in [SecretRotationRecord.from_row(r) async for r in rows]:
        outcomes[await _recheck(row)] += 1
    outcomes.pop("ok", None)
    return {"checked": len(entries), **dict(sorted(outcomes.items()))}


async def _recheck(record: SecretRotationRecord) -> str:
    """Re-read every destination (re-deliver where it drifted or a delivery is due again)."""
    if record.step or in_flight(record) or not record.client_secret_key_id:
        return "busy"
    value = await secret_engine.current_value(record)
    if value is None:
        return "no_value"
    secret = secret_engine.to_deliver(record, value, record.client_secret_key_id, record.current_expires_at)
    delivery = Delivery(record.id, secret_engine.destinations_of(record), secret_engine.access_for, secret)
    checked = await delivery.recheck(record.destination_states)
    before = record.pending_removals()
    record.destination_states = checked.states
    try:
        await secret_engine.retire_released(record)
        await store.save(record)
    except tables.ConcurrencyConflict:
        return "claimed_elsewhere"
    except Exception:  # a removal that failed is retried on the next run (the key stays listed)
        return "retire_failed"
    if checked.drifted:
        return "repaired" if not checked.failed else "drifted"
    if before != record.pending_removals():
        return "released"
    return "failed" if checked.failed else "ok"
