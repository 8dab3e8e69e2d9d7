"""Broker-made secrets that must go: retired ones (a PATCH replaced them) and all of them on delete.

Each Key ID is recorded (intent) before the removePassword that removes it; a removal that
fails stays listed for the reconciler. The Key ID a connection uses now is never removed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from core import audit, azure_gateway, clock, events, tables
from core.errors import Conflict, UpstreamError
from core.secret_store import secret_store
from rotation import store
from rotation.azure_steps import (
    MAX_ERROR,
    describe_error,
    get_application,
    graph_status,
    remove_password,
)
from rotation.flavours import CONNECTION, DISPLAY_PREFIX
from rotation.rotator import STUCK_AFTER, in_flight, pending_name
from rotation.store import RotationRecord

if TYPE_CHECKING:
    from core.auth import Caller

log = logging.getLogger(__name__)

# One removePassword of a retired Key ID (retries included) may take this long; the rest waits
# for the reconciler, so a PATCH never hangs on it.
CLEANUP_TIMEOUT_SECONDS = 30.0


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
            async with azure_gateway.deadline(CLEANUP_TIMEOUT_SECONDS):
                await remove_password(record, key_id)
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
            CONNECTION.resource,
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
            CONNECTION.resource,
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

    return isinstance(error, ClientAuthenticationError) or graph_status(error) in (401, 403, 404)


async def claim_for_delete(connection_id: str) -> RotationRecord | None:
    """Claim the rotation row for a delete (ETag write, status `deleting`): 409 if a run is in flight.

    From here on no rotation can begin (its claim would lose the ETag race or see `deleting`),
    so nothing is added to the app while the delete removes what is there.
    """
    record = await store.load(connection_id)
    if record is None:
        return None
    if in_flight(record):
        raise Conflict(
            "a rotation of this connection is in flight; delete it when the rotation has finished",
            code="rotation-in-flight",
        )
    record.status = "deleting"
    record.step = record.step or "deleting"
    record.step_at = clock.isoformat(clock.now())
    try:
        return await store.save(record)
    except tables.ConcurrencyConflict:
        raise Conflict(
            "a rotation of this connection started meanwhile; delete it when the rotation has finished",
            code="rotation-in-flight",
        ) from None


async def forget(connection_id: str, client_id: str) -> None:
    """Remove every broker-marked secret from the connection's app (tracked or not), then the row.

    A transient Azure failure refuses the delete (502, try again) rather than leave a
    broker-made secret on the app; if the app or the connection's access to it is gone for
    good, the delete goes ahead and the audit log names the Key IDs left behind.
    """
    record = await claim_for_delete(connection_id)
    if record is None:
        return  # never rotated: the broker added nothing to this app
    doomed: set[str] = set()
    try:
        app = await get_application(connection_id, client_id)
        doomed = {
            str(c.key_id).lower()
            for c in app.password_credentials or []
            if c.key_id and (c.display_name or "").startswith(DISPLAY_PREFIX)
        }
        doomed.update(record.pending_removals())
        if record.broker_owned:
            doomed.add(record.client_secret_key_id.lower())
        for key_id in sorted(k for k in doomed if k):
            await remove_password_of(connection_id, app.id or "", key_id)
        if record.run_id:
            await secret_store().delete(pending_name(record))
    except Exception as error:
        message = describe_error(error)
        if not _permanent(error):
            await _release(record)
            raise UpstreamError(
                "could not remove the broker-made client secrets from the app, so the connection "
                f"was not deleted; try again: {message}",
                code="rotation-cleanup-failed",
            ) from None
        log.warning("removing broker-made secrets of %s failed for good: %s", connection_id, message)
        left = ", ".join(sorted(k for k in doomed if k)) or "unknown"
        await audit.record(
            audit.SYSTEM,
            "rotation.forget",
            CONNECTION.resource,
            connection_id,
            result="failure",
            detail=f"broker-made client secrets may remain on the app (Key IDs {left}): {message}",
        )
    await store.remove(record)


async def _release(record: RotationRecord) -> None:
    """Give the claim back after a refused delete (the row is as before, less the half-done run)."""
    record.status = "failed" if record.last_error else "scheduled"
    record.step = "" if record.step == "deleting" else record.step
    try:
        await store.save(record)
    except tables.ConcurrencyConflict:
        log.warning("the rotation of %s changed while a refused delete released it", record.connection_id)


async def remove_password_of(connection_id: str, app_object_id: str, key_id: str) -> None:
    """removePassword on the connection's app (an already-gone Key ID counts as removed)."""
    await remove_password(RotationRecord(connection_id=connection_id, app_object_id=app_object_id), key_id)
