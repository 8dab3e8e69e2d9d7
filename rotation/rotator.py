"""The rotation state machine: replace a connection's client secret without ever locking it out.

Steps, each recorded in the `Rotations` row *before* the Azure call that follows it:

    planned  --addPassword-->  added(newKeyId)  --token with the new secret-->  verified
    verified --store + switch the connection-->  stored  --removePassword(old)-->  done

`planned` carries the new credential's unique display name, so a credential whose
`addPassword` answer was lost (crash, timeout) is still found on the app and removed.
Between `added` and `stored` the new secret waits in the secret store under a per-run name,
so a crash there can be finished. Going back is allowed until the connection switched
(`planned`, `added`): the new credential is removed and the old one kept. From `verified` on,
only forward: the new secret works, and the old one is removed only after the switch.
Every step is idempotent, so resuming a step that may already have happened is safe.

A failure keeps a working secret, records `status: failed` and `lastError` (texts built here,
never a secret), moves `nextRotationAt` by exponential backoff, is audited and emitted as a
`rotation.failed` warning. A worker that died mid-way leaves `status: rotating` with an old
`stepAt`; the timer or the reconciler takes it over (ETag claim) after `STUCK_AFTER`.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, cast

from core import audit, azure_gateway, clock, tables
from core.azure_failure import AzureFailure
from core.errors import Conflict, NotFound
from core.secret_store import SecretMissing, secret_name, secret_store
from rotation import schedule, store
from rotation.azure_steps import (
    MAX_ERROR,
    RotationError,
    add_password,
    describe_error,
    facts,
    get_application,
    remove_password,
    verify_secret,
)
from rotation.flavours import CONNECTION, Superseded, flavour_of
from rotation.store import RotationRecord

if TYPE_CHECKING:
    from core.auth import Caller

log = logging.getLogger(__name__)

Step = Literal["planned", "added", "verified", "stored"]
Trigger = Literal["create", "schedule", "manual"]

# A rotation whose step has not moved for this long belongs to a worker that died.
STUCK_AFTER = timedelta(minutes=5)


# ---------------------------------------------------------------- state predicates


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def claim_until(record: RotationRecord) -> datetime:
    """When the claim of the recorded step ends: its Azure calls run under this deadline."""
    step_at = _parse(record.step_at) or clock.now()
    return step_at + STUCK_AFTER


def in_flight(record: RotationRecord, now: datetime | None = None) -> bool:
    """A live worker is rotating (or deleting) this connection now (so others keep off).

    A takeover waits for the claim plus the longest single Azure call (`azure_gateway.takeover_at`):
    a request sent just before the claim ended has surely landed by then.
    """
    if not record.step or record.status not in ("rotating", "deleting") or not record.step_at:
        return False
    return azure_gateway.takeover_at(claim_until(record)) > (now or clock.now())


def pending_name(record: RotationRecord) -> str:
    """The secret-store name of the new secret of this run (one name per run, deleted after)."""
    assert record.run_id
    return secret_name("rotation", record.subject_id, f"pending-{record.run_id}")


# ---------------------------------------------------------------- the steps


def _next_slot(record: RotationRecord, rotated_at: datetime) -> datetime | None:
    if not record.interval_days or not record.rotate_at:
        return None
    return schedule.next_rotation(
        rotated_at,
        record.interval_days,
        schedule.parse_rotate_at(record.rotate_at),
        schedule.zone(record.time_zone),
        slot=_parse(record.slot_at),
    )


def _plan(record: RotationRecord, caller: Caller, trigger: Trigger) -> None:
    now = clock.now()
    record.run_id = secrets.token_hex(6)
    record.step = "planned"
    record.status = "rotating"
    record.step_at = clock.isoformat(now)
    record.trigger = trigger
    record.actor_id, record.actor_name = caller.id, caller.name
    record.old_key_id = record.client_secret_key_id
    record.new_key_id = None
    flavour = flavour_of(record)
    record.new_display_name = flavour.display_name(record, now)
    record.new_end_at = clock.isoformat(flavour.end_of(record, now, _next_slot(record, now)))


def _clear_run(record: RotationRecord) -> None:
    record.step = ""
    record.pending_secret = None
    record.run_id = record.new_display_name = record.new_key_id = record.old_key_id = None
    record.new_end_at = None


async def _save_step(record: RotationRecord, step: str) -> RotationRecord:
    record.step = step
    record.step_at = clock.isoformat(clock.now())
    return await store.save(record)


async def advance(record: RotationRecord) -> RotationRecord:
    """Do the Azure call that follows the recorded step, then record the next step."""
    step = record.step
    if step == "planned":
        key_id, secret = await add_password(record)
        record.new_key_id = key_id  # known from here on, even if the store write fails
        await secret_store().set(pending_name(record), secret)
        record.pending_secret = secret
        return await _save_step(record, "added")
    if step == "added":
        tenant_id, client_id = await flavour_of(record).app_of(record)
        secret = await _pending_secret(record)
        await verify_secret(tenant_id, client_id, secret)
        return await _save_step(record, "verified")
    if step == "verified":
        await flavour_of(record).make_current(record, await _pending_secret(record))
        return await _save_step(record, "stored")
    if step == "stored":
        await flavour_of(record).retire(record)
        await secret_store().delete(pending_name(record))
        return await _finish(record)
    raise RotationError(f"unknown rotation step {step!r}")


async def _pending_secret(record: RotationRecord) -> str:
    if record.pending_secret:
        return record.pending_secret
    try:
        record.pending_secret = await secret_store().get(pending_name(record))
        return record.pending_secret
    except SecretMissing:
        raise RotationError("the new secret is missing from the secret store") from None


async def _finish(record: RotationRecord) -> RotationRecord:
    now = clock.now()
    trigger, new_key, old_key = record.trigger, record.new_key_id, record.old_key_id
    actor = _actor(record)
    flavour = flavour_of(record)
    flavour.finish(record)
    record.last_rotated_at = clock.isoformat(now)
    upcoming = _next_slot(record, now) if record.enabled else None
    record.next_rotation_at = clock.isoformat(upcoming) if upcoming else None
    record.slot_at = None
    record.status = "scheduled" if record.enabled else "disabled"
    record.failures = 0
    record.last_error = None
    _clear_run(record)
    record = await _conclude(record, now, actor, "success", f"newKeyId={new_key} removedKeyId={old_key}")
    flavour.succeeded(record, trigger, new_key)
    return record


async def _conclude(
    record: RotationRecord, now: datetime, actor: Caller, result: Literal["success", "failure"], detail: str
) -> RotationRecord:
    """Save the outcome of an attempt and audit it (`rotation.rotate`, with its trigger)."""
    trigger = record.trigger
    record.step_at = clock.isoformat(now)
    record = await store.save(record)
    await audit.record(
        actor,
        "rotation.rotate",
        flavour_of(record).resource,
        record.subject_id,
        result,
        detail=f"trigger={trigger} {detail}",
    )
    return record


def _actor(record: RotationRecord) -> Caller:
    from core.auth import Caller

    if record.actor_id and record.actor_id != audit.SYSTEM.id:
        return Caller(id=record.actor_id, name=record.actor_name or record.actor_id)
    return audit.SYSTEM


async def rollback(record: RotationRecord) -> RotationRecord:
    """Undo a run that has not switched the connection (planned/added): remove what it added.

    Finds the new credential by Key ID and by the run's display name (an `addPassword`
    whose answer was lost), removes each, deletes the pending secret, and clears the run.
    Does not save: the caller records the outcome.
    """
    assert record.step in ("planned", "added", "verified"), record.step
    _, client_id = await flavour_of(record).app_of(record)
    app = await get_application(record.connection_id, client_id)
    doomed = {
        str(c.key_id).lower()
        for c in app.password_credentials or []
        if c.key_id
        and (
            (record.new_display_name and c.display_name == record.new_display_name)
            or str(c.key_id).lower() == (record.new_key_id or "").lower()
        )
    }
    doomed.discard((record.old_key_id or "").lower())  # never the working one
    for key_id in sorted(doomed):
        await remove_password(record, key_id)
    if record.run_id:
        await secret_store().delete(pending_name(record))
    _clear_run(record)
    return record


async def _connection_gone(connection_id: str) -> bool:
    try:
        await facts(connection_id)
    except NotFound:
        return True
    return False


async def _fail(record: RotationRecord, error: BaseException) -> RotationRecord:
    """Record a failed attempt: roll back if still allowed, back off, audit, emit a warning."""
    step = record.step
    own = flavour_of(record) is CONNECTION
    if own and isinstance(error, NotFound) and await _connection_gone(record.connection_id):
        # The connection was deleted under us (e.g. a create rolled back): nothing left to rotate.
        log.warning("rotation of %s dropped: the connection no longer exists", record.connection_id)
        await store.remove(record)
        record.enabled = False
        _clear_run(record)
        record.status = "disabled"
        return record
    message = describe_error(error)
    log.warning("rotation of %s failed at %s: %s", record.connection_id, step, message)
    rolled_back = False
    # An addPassword whose outcome is unknown (cut by the claim's deadline) may still land until the
    # claim plus the longest call: the step stays `planned`, and the takeover undoes it after that.
    landing = step == "planned" and isinstance(error, AzureFailure) and error.outcome_unknown
    if (step in ("planned", "added") or isinstance(error, Superseded)) and not landing:
        try:
            record = await rollback(record)
            rolled_back = True
        except Exception as undo_error:
            log.warning(
                "rollback of %s failed (the next attempt resumes it): %s",
                record.connection_id,
                describe_error(undo_error),
            )
    now = clock.now()
    actor = _actor(record)
    trigger = record.trigger
    record.failures += 1
    record.status = "failed"
    record.last_error = f"{step}: {message}"[:MAX_ERROR]
    retry_at = now + schedule.retry_delay(record.failures)
    if record.slot_at is None and record.next_rotation_at and trigger == "schedule":
        record.slot_at = record.next_rotation_at
    record.next_rotation_at = clock.isoformat(retry_at)
    record = await _conclude(
        record, now, actor, "failure", f"step={step} rolledBack={rolled_back} error={message}"
    )
    flavour_of(record).failed(record, trigger, step, message, record.failures)
    return record


async def run(record: RotationRecord) -> RotationRecord:
    """Drive a claimed rotation to `done`, or to a recorded failure."""
    while record.step:
        try:
            async with azure_gateway.deadline(claim_until(record)):  # no step outlives its claim
                record = await advance(record)
        except tables.ConcurrencyConflict:
            raise  # someone else owns the row now; they carry on
        except Exception as error:
            return await _fail(record, error)
    return record


# ---------------------------------------------------------------- entry points


async def begin(
    record: RotationRecord, caller: Caller, trigger: Trigger, *, move_due: bool = False, new_row: bool = False
) -> RotationRecord:
    """Claim the row (ETag write) with the intent `planned`; `ConcurrencyConflict` if beaten to it.

    `move_due` points the due index at now, so that a crash of an unscheduled (manual) run is
    found by the timer and the reconciler like any due one. `new_row` creates the row with the run
    already claimed (a connection's create), so no other run can begin before it.
    """
    if record.step:
        raise Conflict("a rotation of this connection is in flight", code="rotation-in-flight")
    await flavour_of(record).check_begin(record)
    if trigger == "schedule" and record.slot_at is None:
        record.slot_at = record.next_rotation_at
    elif trigger != "schedule":
        record.slot_at = None
    if move_due:
        record.next_rotation_at = clock.isoformat(clock.now())
    _plan(record, caller, trigger)
    return await (store.create(record) if new_row else store.save(record))


async def take_over(record: RotationRecord, caller: Caller) -> RotationRecord:
    """Claim a half-done rotation (dead worker or failed attempt) and finish or undo it.

    From `planned` nobody knows whether `addPassword` happened: undo, then start afresh.
    From `added` on, carry on (a new secret that never works is undone by `run`'s failure path).
    """
    if record.step == "deleting":
        # A delete that died after its claim: give the row back (the connection still exists).
        record.step, record.status = "", "failed" if record.last_error else "scheduled"
        return await store.save(record)
    record.status = "rotating"
    record.step_at = clock.isoformat(clock.now())
    record = await store.save(record)  # the ETag claim
    if record.step == "planned":
        try:
            record = await rollback(record)
            await flavour_of(record).check_begin(record)  # afresh: as `begin` would (a PATCH meanwhile)
        except Exception as error:
            return await _fail(record, error)
        _plan(record, caller, cast(Trigger, record.trigger or "schedule"))
        record = await store.save(record)
    return await run(record)
