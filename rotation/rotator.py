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

import asyncio
import logging
import re
import secrets
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, cast
from uuid import UUID

from connections.client_secrets import RESOURCE  # rotation is audited as the connection's events
from core import audit, clock, events, tables
from core.errors import Conflict, FieldError, NotFound, Problem, Unprocessable, UpstreamError
from core.secret_store import SecretMissing, secret_name, secret_store
from rotation import schedule, store
from rotation.store import RotationRecord

if TYPE_CHECKING:
    from msgraph.generated.models.application import Application
    from msgraph.graph_service_client import GraphServiceClient

    from connections.client_secrets import ClientSecretConnection
    from core.auth import Caller

log = logging.getLogger(__name__)

Step = Literal["planned", "added", "verified", "stored"]
Trigger = Literal["create", "schedule", "manual"]

DISPLAY_PREFIX = "azure-credential-broker"
# A new secret lives until the next planned rotation plus this margin, so that a few failed
# attempts (alerted on) do not let it expire, and a forgotten one does not live forever.
END_DATE_GRACE = timedelta(days=14)
# How long a new secret may take to get a token (Entra replication), with backoff between tries.
VERIFY_TIMEOUT_SECONDS = 60.0
VERIFY_FIRST_DELAY_SECONDS = 0.5
VERIFY_MAX_DELAY_SECONDS = 8.0
# A rotation whose step has not moved for this long belongs to a worker that died.
STUCK_AFTER = timedelta(minutes=5)
# One removePassword of a retired Key ID (retries included) may take this long; the rest waits
# for the reconciler, so a PATCH never hangs on it.
CLEANUP_TIMEOUT_SECONDS = 30.0
MAX_ERROR = 300
_AADSTS = re.compile(r"AADSTS\d+")


class RotationError(Exception):
    """A step failed; `message` is safe to store and show (no secret, no raw exception text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------- state predicates


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def in_flight(record: RotationRecord, now: datetime | None = None) -> bool:
    """A live worker is rotating this connection now (so others keep off)."""
    if not record.step or record.status != "rotating":
        return False
    step_at = _parse(record.step_at)
    return step_at is not None and step_at > (now or clock.now()) - STUCK_AFTER


def needs_recovery(record: RotationRecord, now: datetime | None = None) -> bool:
    """Half-done, and nobody is working on it: a dead worker's, or a failed attempt's."""
    return bool(record.step) and not in_flight(record, now)


def pending_name(record: RotationRecord) -> str:
    """The secret-store name of the new secret of this run (one name per run, deleted after)."""
    assert record.run_id
    return secret_name("rotation", record.connection_id, f"pending-{record.run_id}")


# ---------------------------------------------------------------- Graph


async def _graph(connection_id: str) -> GraphServiceClient:
    from connections.client_secrets import graph_client_for

    return await graph_client_for(connection_id)


def _graph_status(error: BaseException) -> int | None:
    from kiota_abstractions.api_error import APIError

    if isinstance(error, APIError):
        return error.response_status_code
    return None


def describe_error(error: BaseException, *known_secrets: str | None) -> str:
    """A short, secret-free account of an error for `lastError`, audit and events."""
    from kiota_abstractions.api_error import APIError

    if isinstance(error, RotationError):
        text = error.message
    elif isinstance(error, Problem):
        text = error.detail
    elif isinstance(error, APIError):
        code = message = ""
        inner = getattr(error, "error", None)
        if inner is not None:
            code = str(getattr(inner, "code", "") or "")
            message = str(getattr(inner, "message", "") or "")
        text = f"Microsoft Graph answered {error.response_status_code}" + (f" {code}" if code else "")
        if message:
            text += f": {message}"
    else:
        from azure.core.exceptions import ClientAuthenticationError

        if isinstance(error, ClientAuthenticationError):
            codes = sorted(set(_AADSTS.findall(str(error.message or ""))))
            text = "Entra ID refused the token request" + (f" ({', '.join(codes)})" if codes else "")
        elif isinstance(error, TimeoutError | asyncio.TimeoutError):
            text = "a call to Azure timed out"
        else:
            text = f"unexpected {type(error).__name__}"
    for secret in known_secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:MAX_ERROR]


async def get_application(connection_id: str, client_id: str) -> Application:
    """The connection's app registration (by its appId), with its password credentials."""
    client = await _graph(connection_id)
    app = await client.applications_with_app_id(client_id).get()
    if app is None or not app.id:
        raise RotationError(f"Microsoft Graph returned no application for appId {client_id}")
    return app


async def check_key_id(connection: ClientSecretConnection, key_id: str) -> str:
    """422 unless `key_id` is a password credential of the connection's app; the app's object id."""
    from connections.client_secrets import require_key_id

    try:
        app = await get_application(connection.id, connection.client_id)
    except Exception as error:
        status = _graph_status(error)
        detail = describe_error(error)
        if status in (401, 403):
            raise Unprocessable(
                "the connection's app cannot read its own registration, so it cannot rotate its secret",
                [
                    FieldError(
                        "rotation",
                        "grant the app Application.ReadWrite.OwnedBy (and make it an owner of itself) "
                        f"or Application.ReadWrite.All: {detail}",
                    )
                ],
            ) from None
        if status == 404:
            raise Unprocessable(
                "the app registration was not found in the connection's tenant",
                [FieldError("rotation", f"app {connection.client_id} has no registration here: {detail}")],
            ) from None
        raise UpstreamError(f"could not read the app registration from Microsoft Graph: {detail}") from None
    require_key_id(app, key_id, connection.client_id)
    assert app.id
    return str(app.id)


async def _add_password(record: RotationRecord) -> tuple[str, str]:
    from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
        AddPasswordPostRequestBody,
    )
    from msgraph.generated.models.password_credential import PasswordCredential

    client = await _graph(record.connection_id)
    body = AddPasswordPostRequestBody(
        password_credential=PasswordCredential(
            display_name=record.new_display_name, end_date_time=_parse(record.new_end_at)
        )
    )
    created = await client.applications.by_application_id(record.app_object_id).add_password.post(body)
    if created is None or not created.key_id or not created.secret_text:
        raise RotationError("addPassword returned no key id or secret")
    return str(created.key_id).lower(), created.secret_text


async def _remove_password(record: RotationRecord, key_id: str) -> None:
    """removePassword; a key that is already gone counts as removed (so the step is idempotent)."""
    from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
        RemovePasswordPostRequestBody,
    )

    client = await _graph(record.connection_id)
    try:
        await client.applications.by_application_id(record.app_object_id).remove_password.post(
            RemovePasswordPostRequestBody(key_id=UUID(key_id))
        )
    except Exception as error:
        if _graph_status(error) not in (400, 404):
            raise
        # Graph refuses to remove an unknown key id; make sure that is why.
        connection = await _connection(record.connection_id)
        app = await get_application(record.connection_id, connection.client_id)
        if any(str(c.key_id).lower() == key_id.lower() for c in app.password_credentials or []):
            raise


async def _connection(connection_id: str) -> ClientSecretConnection:
    from connections.client_secrets import get_connection

    return await get_connection(connection_id)


async def verify_secret(tenant_id: str, client_id: str, secret: str) -> None:
    """Prove the secret gets a Graph token, retrying through replication delay (bounded)."""
    from azure.core.exceptions import ClientAuthenticationError

    from core.azure_clients import client_secret_credential, graph_scope

    deadline = time.monotonic() + VERIFY_TIMEOUT_SECONDS
    delay = VERIFY_FIRST_DELAY_SECONDS
    while True:
        credential = client_secret_credential(tenant_id, client_id, secret)
        try:
            async with credential:
                await credential.get_token(graph_scope())
            return
        except ClientAuthenticationError as error:
            if time.monotonic() + delay > deadline:
                raise RotationError(
                    f"the new secret did not get a token within {VERIFY_TIMEOUT_SECONDS:.0f}s: "
                    + describe_error(error, secret)
                ) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, VERIFY_MAX_DELAY_SECONDS)


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
    record.new_display_name = f"{DISPLAY_PREFIX} {clock.isoformat(now)} {record.run_id}"
    planned_next = _next_slot(record, now) or now + timedelta(days=record.interval_days or 30)
    record.new_end_at = clock.isoformat(planned_next + END_DATE_GRACE)


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
        key_id, secret = await _add_password(record)
        record.new_key_id = key_id  # known from here on, even if the store write fails
        await secret_store().set(pending_name(record), secret)
        record.pending_secret = secret
        return await _save_step(record, "added")
    if step == "added":
        connection = await _connection(record.connection_id)
        secret = await _pending_secret(record)
        await verify_secret(connection.tenant_id, connection.client_id, secret)
        return await _save_step(record, "verified")
    if step == "verified":
        from connections.client_secrets import store_client_secret

        await store_client_secret(record.connection_id, await _pending_secret(record))
        return await _save_step(record, "stored")
    if step == "stored":
        if record.old_key_id and record.old_key_id != record.new_key_id:
            await _remove_password(record, record.old_key_id)
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
    record.client_secret_key_id = new_key or record.client_secret_key_id
    record.broker_owned = True
    record.last_rotated_at = clock.isoformat(now)
    upcoming = _next_slot(record, now) if record.enabled else None
    record.next_rotation_at = clock.isoformat(upcoming) if upcoming else None
    record.slot_at = None
    record.status = "scheduled" if record.enabled else "disabled"
    record.failures = 0
    record.last_error = None
    _clear_run(record)
    record = await _conclude(record, now, actor, "success", f"newKeyId={new_key} removedKeyId={old_key}")
    events.emit(
        "rotation.succeeded",
        connectionId=record.connection_id,
        trigger=trigger,
        keyId=new_key,
        nextRotationAt=record.next_rotation_at,
    )
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
        RESOURCE,
        record.connection_id,
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
    assert record.step in ("planned", "added"), record.step
    connection = await _connection(record.connection_id)
    app = await get_application(record.connection_id, connection.client_id)
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
        await _remove_password(record, key_id)
    if record.run_id:
        await secret_store().delete(pending_name(record))
    _clear_run(record)
    return record


async def _connection_gone(connection_id: str) -> bool:
    try:
        await _connection(connection_id)
    except NotFound:
        return True
    return False


async def _fail(record: RotationRecord, error: BaseException) -> RotationRecord:
    """Record a failed attempt: roll back if still allowed, back off, audit, emit a warning."""
    step = record.step
    if isinstance(error, NotFound) and await _connection_gone(record.connection_id):
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
    if step in ("planned", "added"):
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
    events.emit(
        "rotation.failed",
        level=logging.WARNING,
        connectionId=record.connection_id,
        trigger=trigger,
        step=step,
        error=message,
        failures=record.failures,
        retryAt=record.next_rotation_at,
    )
    return record


async def run(record: RotationRecord) -> RotationRecord:
    """Drive a claimed rotation to `done`, or to a recorded failure."""
    while record.step:
        try:
            record = await advance(record)
        except tables.ConcurrencyConflict:
            raise  # someone else owns the row now; they carry on
        except Exception as error:
            return await _fail(record, error)
    return record


# ---------------------------------------------------------------- entry points


async def begin(
    record: RotationRecord, caller: Caller, trigger: Trigger, *, move_due: bool = False
) -> RotationRecord:
    """Claim the row (ETag write) with the intent `planned`; `ConcurrencyConflict` if beaten to it.

    `move_due` points the due index at now, so that a crash of an unscheduled (manual) run is
    found by the timer and the reconciler like any due one.
    """
    if record.step:
        raise Conflict("a rotation of this connection is in flight", code="rotation-in-flight")
    if trigger == "schedule" and record.slot_at is None:
        record.slot_at = record.next_rotation_at
    elif trigger != "schedule":
        record.slot_at = None
    if move_due:
        record.next_rotation_at = clock.isoformat(clock.now())
    _plan(record, caller, trigger)
    return await store.save(record)


async def take_over(record: RotationRecord, caller: Caller) -> RotationRecord:
    """Claim a half-done rotation (dead worker or failed attempt) and finish or undo it.

    From `planned` nobody knows whether `addPassword` happened: undo, then start afresh.
    From `added` on, carry on (a new secret that never works is undone by `run`'s failure path).
    """
    record.status = "rotating"
    record.step_at = clock.isoformat(clock.now())
    record = await store.save(record)  # the ETag claim
    if record.step == "planned":
        try:
            record = await rollback(record)
        except Exception as error:
            return await _fail(record, error)
        _plan(record, caller, cast(Trigger, record.trigger or "schedule"))
        record = await store.save(record)
    return await run(record)


async def rotate_now(
    connection_id: str, caller: Caller, *, trigger: Trigger, record: RotationRecord | None = None
) -> RotationRecord:
    """Rotate right away (create, manual): 409 if another rotation is in flight."""
    record = record or await store.load(connection_id)
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


async def process_due(connection_id: str, index_key: str, now: datetime) -> str:
    """The timer's work on one due index entry; returns what happened (for the job summary)."""
    record = await store.load(connection_id)
    current = store.index_key(record.next_rotation_at or "", connection_id) if record else None
    if record is None or not record.enabled or current != index_key:
        # Not (or no longer) the row's entry. A young one may belong to a write in progress
        # (index entry first, row second), so only entries older than STUCK_AFTER are dropped.
        entry_at = _parse(index_key.partition("_")[0])
        if entry_at is not None and entry_at < now - STUCK_AFTER:
            await store.drop_index(index_key)
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
    return "failed" if record.status == "failed" else outcome


async def recover_stuck(connection_id: str, now: datetime) -> str:
    """The reconciler's work on one connection: finish or undo a dead worker's rotation."""
    record = await store.load(connection_id)
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
            connectionId=record.connection_id,
            fromStep=from_step,
            status=record.status,
        )
    return record


# ---------------------------------------------------------------- retired broker-made secrets


async def retire(record: RotationRecord, key_id: str) -> RotationRecord:
    """Record (before any Azure call) that a broker-made Key ID is no longer the connection's.

    Adds it to `pendingRemovalKeyIds` and indexes the connection for the reconciler; does not
    save the row (the caller saves it together with the switch to the new Key ID, so the Key ID
    is tracked either as the current one or as pending removal, never neither).
    """
    key = key_id.lower()
    if key and key != (record.client_secret_key_id or "").lower():
        await store.mark_cleanup(record.connection_id)  # the index entry first, the row second
        record.set_pending_removals({*record.pending_removals(), key})
    return record


async def remove_retired(record: RotationRecord, caller: Caller) -> RotationRecord:
    """removePassword each Key ID pending removal; what fails stays listed for the reconciler.

    Never removes the Key ID the connection uses now, or the new one of a run in flight (both
    are dropped from the list instead). An already-gone Key ID counts as removed. Saves the row
    (ETag) and drops the cleanup index entry once the list is empty; audits the outcome.
    """
    keep_out = {(record.client_secret_key_id or "").lower(), (record.new_key_id or "").lower()}
    pending = [k for k in record.pending_removals() if k not in keep_out]
    removed: list[str] = []
    failed: dict[str, str] = {}
    for key_id in pending:
        try:
            await asyncio.wait_for(_remove_password(record, key_id), CLEANUP_TIMEOUT_SECONDS)
        except Exception as error:
            failed[key_id] = describe_error(error)
        else:
            removed.append(key_id)
    before = record.pending_removals()
    record.set_pending_removals(list(failed))
    if record.pending_removals() != before:
        try:
            record = await store.save(record)
        except tables.ConcurrencyConflict:
            # Someone else (a reconciler, a rotation) wrote the row meanwhile: theirs is the truth.
            # What it still lists is retried later (removing an already-gone Key ID is a no-op).
            latest = await store.load(record.connection_id)
            if latest is None:
                return record
            record = latest
    if not record.pending_removals():
        await store.unmark_cleanup(record.connection_id)
    if removed:
        await audit.record(
            caller,
            "rotation.cleanup",
            RESOURCE,
            record.connection_id,
            detail=f"removedKeyIds={','.join(removed)}",
        )
    if failed:
        message = "; ".join(f"{key}: {text}" for key, text in sorted(failed.items()))[:MAX_ERROR]
        log.warning(
            "removing retired broker-made secrets of %s failed (the reconciler retries): %s",
            record.connection_id,
            message,
        )
        await audit.record(
            caller,
            "rotation.cleanup",
            RESOURCE,
            record.connection_id,
            result="failure",
            detail=f"pendingRemovalKeyIds={','.join(sorted(failed))} (the reconciler retries): {message}",
        )
    return record


async def clean_up(connection_id: str, since: datetime | None, now: datetime) -> str:
    """The reconciler's work on one cleanup index entry; returns what happened."""
    record = await store.load(connection_id)
    if record is None or not record.pending_removals():
        # A young entry may belong to a write in progress (entry first, row second).
        if since is None or since < now - STUCK_AFTER:
            await store.unmark_cleanup(connection_id)
            return "cleanup_stale"
        return "ok"
    if in_flight(record, now):
        return "busy"
    record = await remove_retired(record, audit.SYSTEM)
    if record.pending_removals():
        return "cleanup_pending"
    events.emit("reconcile.fixed", kind="rotation-cleanup", connectionId=connection_id)
    return "cleaned_up"


def _permanent(error: BaseException) -> bool:
    """The app or our access to it is gone for good (nothing we could remove is reachable)."""
    from azure.core.exceptions import ClientAuthenticationError

    return isinstance(error, ClientAuthenticationError) or _graph_status(error) in (401, 403, 404)


async def forget(connection_id: str) -> None:
    """Delete a connection's rotation, removing the broker-made credentials it tracks first
    (the current one if broker-made, a half-done run's new one, and those pending removal).

    A transient Azure failure refuses the delete (502, try again) rather than leave a
    broker-made secret on the app untracked; if the app or the connection's access to it is
    gone for good, the delete goes ahead and the audit log names the Key IDs left behind.
    """
    record = await store.load(connection_id)
    if record is None:
        return
    if in_flight(record):
        raise Conflict(
            "a rotation of this connection is in flight; delete it when the rotation has finished",
            code="rotation-in-flight",
        )
    doomed = {record.new_key_id} if record.step in ("verified", "stored") else set()
    if record.broker_owned:
        doomed.add(record.client_secret_key_id)
    doomed.update(record.pending_removals())
    try:
        if record.step in ("planned", "added"):
            record = await rollback(record)
        for key_id in sorted(k for k in doomed if k):
            await _remove_password(record, key_id)
        if record.run_id:
            await secret_store().delete(pending_name(record))
    except Exception as error:
        message = describe_error(error)
        if not _permanent(error):
            raise UpstreamError(
                "could not remove the broker-made client secrets from the app, so the connection "
                f"was not deleted; try again: {message}",
                code="rotation-cleanup-failed",
            ) from None
        log.warning("removing broker-made secrets of %s failed for good: %s", connection_id, message)
        left = ", ".join(sorted(k for k in doomed | {record.new_key_id} if k)) or "unknown"
        await audit.record(
            audit.SYSTEM,
            "rotation.forget",
            RESOURCE,
            connection_id,
            result="failure",
            detail=f"broker-made client secrets may remain on the app (Key IDs {left}): {message}",
        )
    await store.remove(record)
