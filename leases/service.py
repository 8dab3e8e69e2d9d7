"""Leases: creating, reading and renewing them, and the helpers the other lease modules share.

Dynamic secrets live in `leases.dynamic_secrets`, revoking in `leases.revoking`.

A lease's life, and what each step writes (see records.py for the keys):

1. claim the user (`Leases/{name}/active`, insert: a second lease is a 409 naming the first);
2. intent + due entry (`LeaseIndex`, one transaction), then the lease row as `pending`;
3. `PATCH /users/{id}` with a fresh password (the one Graph call);
4. lease `pending -> active` (ETag: if the reconciler took the lease meanwhile, this fails and
   the caller gets no password), then the intent is deleted.

A crash anywhere leaves an intent the reconciler finds: no lease row -> nothing was set in
Azure, the claim and entries are removed; a `pending` lease -> its password is reset and the
lease recorded as revoked. Revoking: claim (`-> revoking`, ETag, with `claimUntil`), set an
unknown password, then `revoked` + claim released (one transaction) and due -> purge entry.
A failed revoke becomes `revoke_failed` with `lastError` and its due entry moved to
`nextAttemptAt` (backoff), so the sweeper tries again; its record is never deleted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core import audit, azure_gateway, clock, events, records
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.durations import format_duration
from core.errors import Conflict, FieldError, NotFound, Problem, Unavailable, Unprocessable
from core.tables import ConcurrencyConflict, RowExists
from leases import provider
from leases import records as lease_rows
from leases.models import Credentials, LeaseCreated, LeaseOut, LeaseRenewed, LeaseStatus
from leases.records import DELETING, DynamicSecret, IndexEntry, Lease, LeaseClaim, index_key

log = logging.getLogger(__name__)

MIN_TTL = timedelta(minutes=1)
# An intent older than this belongs to a create that died; the reconciler resolves it.
# A create's Azure calls run under a deadline of CREATE_BUDGET, and the reconciler takes a
# pending lease over only after RECONCILE_AFTER > CREATE_BUDGET + the gateway's longest call.
RECONCILE_AFTER = timedelta(minutes=3)
CREATE_BUDGET = timedelta(seconds=30)
# Renaming of the gateway's generic field names in problems (an app is `applicationId` here).
FIELDS = {"clientId": "applicationId"}
# How long a revoke claim lasts; a claim whose holder died is taken over after it.
CLAIM_FOR = timedelta(minutes=2)
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


# ---------------------------------------------------------------------------- helpers


def abandoned(claimed_at: datetime) -> bool:
    """A claim older than any create can take: its creator died before writing its lease."""
    return clock.now() - claimed_at > RECONCILE_AFTER


async def credential_ref(lease: Lease) -> str:
    """The secret-store name of the app's client secret: the dynamic secret's current one.

    A PATCH writes a new secret under a new name and deletes the old one, so a lease made
    before it reads the name through its dynamic secret (its own copy if that is gone).
    """
    ds = await records.get(DynamicSecret, "ds", lease.dynamic_secret_name)
    return ds.credential_ref if ds is not None and ds.id == lease.dynamic_secret_id else lease.credential_ref


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... up to 1 h between revoke attempts."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * (1 << min(20, max(0, attempts - 1))))


def check_ttls(default: timedelta, maximum: timedelta) -> None:
    errors = []
    if maximum < MIN_TTL:
        errors.append(FieldError("maxTtl", f"must be at least {format_duration(MIN_TTL)}"))
    if default < MIN_TTL:
        errors.append(FieldError("defaultTtl", f"must be at least {format_duration(MIN_TTL)}"))
    if default > maximum:
        errors.append(FieldError("defaultTtl", f"must not exceed maxTtl ({format_duration(maximum)})"))
    if errors:
        raise Unprocessable("the TTLs are inconsistent", errors)


def azure_problem(failure: AzureFailure, *, validating: bool = False, **extra: Any) -> Problem:
    """An Azure failure as the caller sees it, with this domain's field names."""
    return failure.problem(validating=validating, fields=FIELDS, **extra)


async def dynamic_secret(name: str) -> DynamicSecret:
    ds = await records.get(DynamicSecret, "ds", name) if _NAME.match(name) else None
    if ds is None:
        raise NotFound(f"no dynamic secret is named {name!r}")
    return ds


async def lease_record(lease_id: str) -> Lease:
    lease = await lease_rows.get_lease(lease_id)
    if lease is None:
        raise NotFound(f"no lease has the id {lease_id!r}")
    return lease


# ---------------------------------------------------------------------------- creating a lease


@dataclass
class PendingLease:
    """A lease between its intent and its activation."""

    lease: Lease
    intent: IndexEntry


async def begin_lease(name: str, ttl: timedelta | None, caller: Caller) -> PendingLease:
    """Steps 1-2: claim the user, write the intent and the `pending` lease. Nothing in Azure yet."""
    ds = await dynamic_secret(name)
    wanted = ttl or ds.default_ttl
    if wanted > ds.max_ttl:
        raise Unprocessable(
            "the TTL is above the dynamic secret's maxTtl",
            [FieldError("ttl", f"must be at most {format_duration(ds.max_ttl)}")],
        )
    if wanted < MIN_TTL:
        raise Unprocessable(
            "the TTL is too short", [FieldError("ttl", f"must be at least {format_duration(MIN_TTL)}")]
        )
    now = clock.now()
    lease_id = lease_rows.new_lease_id(name)
    await _claim_user(ds, lease_id)
    await _still_there(ds, lease_id)
    lease = Lease(
        **ds.served(),
        id=lease_id,
        dynamic_secret_name=name,
        dynamic_secret_id=ds.id,
        status=LeaseStatus.PENDING,
        created_at=now,
        expires_at=now + wanted,
        max_expires_at=now + ds.max_ttl,
        due_key=index_key("due", now + wanted, lease_id),
        created_by=caller.id,
    )
    intent = await lease_rows.write_intent(lease)
    return PendingLease(await records.insert(lease), intent)


async def _still_there(ds: DynamicSecret, lease_id: str) -> None:
    """After the claim: the dynamic secret read before it must still exist.

    A delete holds the claim row for its whole run, so once this lease holds it no delete can
    run; one that ran between our read and our claim is seen here, and nothing was done yet.
    """
    current = await records.get(DynamicSecret, "ds", ds.name)
    if current is None or current.id != ds.id:
        await lease_rows.release_claim(ds.name, lease_id)
        raise NotFound(f"no dynamic secret is named {ds.name!r} (it was deleted meanwhile)")


async def _claim_user(ds: DynamicSecret, lease_id: str) -> None:
    mine = LeaseClaim(name=ds.name, lease_id=lease_id, claimed_at=clock.now())
    try:
        await records.insert(mine)
        return
    except RowExists:
        claim = await lease_rows.get_claim(ds.name)
    if claim is None:
        await records.insert(mine)
        return
    if claim.lease_id == f"{DELETING}{ds.id}":
        raise Conflict(f"the dynamic secret {ds.name!r} is being deleted")
    # a marker left by an earlier dynamic secret of this name, or a create that died between
    # its claim and its intent: nothing else refers to the claim
    if claim.deleting or (abandoned(claim.claimed_at) and await lease_rows.get_lease(claim.lease_id) is None):
        try:
            await records.replace(mine.model_copy(update={"etag": claim.etag}))
            return
        except ConcurrencyConflict:
            pass
    raise Conflict(
        f"{ds.user_principal_name} already has an active lease {claim.lease_id}; "
        "revoke it or wait for it to expire",
        extra={"activeLeaseId": claim.lease_id},
        code="active-lease-exists",
    )


async def set_lease_password(pending: PendingLease) -> str:
    """Step 3: the one Graph call. Returns the password (kept in memory only)."""
    lease = pending.lease
    password = provider.generate_password()

    async def call(access: provider.AppAccess) -> None:
        await provider.set_password(access, lease.user_id, password)

    async with azure_gateway.deadline(CREATE_BUDGET.total_seconds()):
        ref = await credential_ref(lease)
        await provider.with_stored_access(lease.tenant_id, lease.application_id, ref, call)
    return password


async def activate_lease(pending: PendingLease, caller: Caller) -> Lease:
    """Step 4: `pending -> active` (ETag), then the intent goes."""
    try:
        lease = await records.replace(pending.lease.model_copy(update={"status": LeaseStatus.ACTIVE}))
    except ConcurrencyConflict:
        raise Unavailable(
            "the lease took too long to record and the reconciler reset its password; try again",
            headers={"Retry-After": "5"},
        ) from None
    await records.delete(pending.intent, conditional=False)
    expires = clock.isoformat(lease.expires_at)
    events.emit(
        "lease.created", level=logging.INFO, **lease.event_ids(), userId=lease.user_id, expiresAt=expires
    )
    await audit.record(caller, "lease.create", "lease", lease.id, detail=f"expires {expires}")
    return lease


async def abandon_lease(pending: PendingLease, failure: AzureFailure, caller: Caller) -> Lease | None:
    """The Graph call failed. If Azure surely changed nothing, undo everything; if the outcome
    is unknown (timeout, 5xx), hand the lease to the sweeper to reset now (`revoke_failed`)."""
    lease = pending.lease
    if not failure.transient or failure.status == 429:
        await lease_rows.delete_unborn(lease, pending.intent)
        await audit.record(caller, "lease.create", "lease", lease.id, "failure", failure.describe())
        return None
    now = clock.now()
    failed = lease.model_copy(
        update={
            "status": LeaseStatus.REVOKE_FAILED,
            "last_error": "creation: " + failure.describe(),
            "next_attempt_at": now,
            "due_key": index_key("due", now, lease.id),
        }
    )
    try:
        failed = await records.replace(failed)
    except ConcurrencyConflict:
        return None  # the reconciler took it
    await lease_rows.move_due(lease, failed)
    await records.delete(pending.intent, conditional=False)
    await audit.record(caller, "lease.create", "lease", lease.id, "failure", str(failed.last_error))
    return failed


async def create_lease(name: str, ttl: timedelta | None, caller: Caller) -> LeaseCreated:
    pending = await begin_lease(name, ttl, caller)
    try:
        password = await set_lease_password(pending)
    except AzureFailure as failure:
        kept = await abandon_lease(pending, failure, caller)
        extra: dict[str, Any] = {"leaseId": kept.id, "leaseStatus": kept.status.value} if kept else {}
        raise azure_problem(failure, **extra) from None
    lease = await activate_lease(pending, caller)
    return LeaseCreated(
        lease=LeaseOut.from_record(lease),
        credentials=Credentials(user_principal_name=lease.user_principal_name, password=password),
    )


# ---------------------------------------------------------------------------- reading, renewing


async def list_leases(name: str, status: LeaseStatus | None, limit: int) -> list[LeaseOut]:
    ds = await dynamic_secret(name)
    leases = await lease_rows.list_leases(name, ds.id, limit, status)
    return [LeaseOut.from_record(lease) for lease in leases]


async def get_lease(lease_id: str) -> LeaseOut:
    return LeaseOut.from_record(await lease_record(lease_id))


async def renew_lease(lease_id: str, ttl: timedelta | None, caller: Caller) -> LeaseRenewed:
    """New expiry = now + ttl, never past createdAt + maxTtl (the response says when capped)."""
    lease = await lease_record(lease_id)
    now = clock.now()
    if lease.status != LeaseStatus.ACTIVE or lease.expires_at <= now:
        raise Conflict(
            f"only an active, unexpired lease can be renewed; this one is {lease.status.value}"
            + (" and expired" if lease.expires_at <= now else "")
        )
    ds = await records.get(DynamicSecret, "ds", lease.dynamic_secret_name)
    cap = lease.max_expires_at
    if ds is not None:  # a lowered maxTtl applies to renewals of existing leases too
        cap = min(cap, lease.created_at + ds.max_ttl)
    wanted = ttl or (ds.default_ttl if ds else None)
    if wanted is None:
        raise Unprocessable("give a ttl", [FieldError("ttl", "is required")])
    requested = now + wanted
    new_expiry = min(requested, cap)
    if new_expiry <= now:
        raise Conflict("the lease has reached its maximum lifetime and cannot be renewed")
    renewed = lease.model_copy(
        update={
            "expires_at": new_expiry,
            "renewed_at": now,
            "due_key": index_key("due", new_expiry, lease_id),
        }
    )
    await records.upsert(IndexEntry.of("due", new_expiry, lease))  # before the lease points at it
    try:
        renewed = await records.replace(renewed)
    except ConcurrencyConflict:
        if renewed.due_key != lease.due_key:
            await lease_rows.delete_index(lease_id, renewed.due_key)
        raise Conflict("the lease changed meanwhile (is it being revoked?); read it and try again") from None
    if renewed.due_key != lease.due_key:
        await lease_rows.delete_index(lease_id, lease.due_key)
    capped = requested > cap
    expires = clock.isoformat(new_expiry)
    await audit.record(
        caller,
        "lease.renew",
        "lease",
        lease_id,
        detail=f"expires {expires}" + (" (capped)" if capped else ""),
    )
    return LeaseRenewed(
        lease=LeaseOut.from_record(renewed),
        capped=capped,
        requested_expires_at=clock.isoformat(requested),
        max_expires_at=clock.isoformat(cap),
    )
