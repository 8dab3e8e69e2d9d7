"""Leases: creating, reading and renewing them, and the helpers the other lease modules share.

Dynamic secrets live in `leases.dynamic_secrets`, revoking in `leases.revoking`.

A lease's life, and what each step writes (see store.py for the keys):

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

from core import audit, azure_gateway, clock, events
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.durations import format_duration, parse_duration
from core.errors import Conflict, FieldError, NotFound, Problem, Unavailable, Unprocessable
from core.tables import ConcurrencyConflict, Row, RowExists
from leases import provider, store
from leases.models import Credentials, DynamicSecretOut, LeaseCreated, LeaseOut, LeaseRenewed, LeaseStatus

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
DELETING = "(deleting)"  # claim marker of a dynamic secret being deleted
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


# ---------------------------------------------------------------------------- helpers


def iso(at: datetime) -> str:
    return clock.isoformat(at)


def parse_time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text))


async def credential_ref(lease: Row) -> str:
    """The secret-store name of the app's client secret: the dynamic secret's current one.

    A PATCH writes a new secret under a new name and deletes the old one, so a lease made
    before it reads the name through its dynamic secret (its own copy if that is gone).
    """
    ds = await store.get_dynamic_secret(str(lease.data["dynamicSecretName"]))
    if ds is not None and ds.data.get("id") == lease.data.get("dynamicSecretId"):
        return str(ds.data["credentialRef"])
    return str(lease.data["credentialRef"])


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... up to 1 h between revoke attempts."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * (1 << min(20, max(0, attempts - 1))))


def _ttl(value: str, field: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise Unprocessable(f"{field} is not a duration", [FieldError(field, str(error))]) from None


def check_ttls(default_ttl: str, max_ttl: str) -> None:
    default, maximum = _ttl(default_ttl, "defaultTtl"), _ttl(max_ttl, "maxTtl")
    errors = []
    if maximum < MIN_TTL:
        errors.append(FieldError("maxTtl", f"must be at least {format_duration(MIN_TTL)}"))
    if default < MIN_TTL:
        errors.append(FieldError("defaultTtl", f"must be at least {format_duration(MIN_TTL)}"))
    if default > maximum:
        errors.append(FieldError("defaultTtl", f"must not exceed maxTtl ({max_ttl})"))
    if errors:
        raise Unprocessable("the TTLs are inconsistent", errors)


def azure_problem(failure: AzureFailure, *, validating: bool = False, **extra: Any) -> Problem:
    """An Azure failure as the caller sees it, with this domain's field names."""
    return failure.problem(validating=validating, fields=FIELDS, **extra)


def ds_out(row: Row) -> DynamicSecretOut:
    d = row.data
    return DynamicSecretOut(
        name=row.rk,
        id=d["id"],
        prefix=d["prefix"],
        tenant_id=d["tenantId"],
        application_id=d["applicationId"],
        user_id=d["userId"],
        user_principal_name=d["userPrincipalName"],
        default_ttl=d["defaultTtl"],
        max_ttl=d["maxTtl"],
        created_at=d["createdAt"],
        updated_at=d["updatedAt"],
    )


def lease_out(row: Row) -> LeaseOut:
    d = row.data
    return LeaseOut(
        id=row.rk,
        dynamic_secret_name=d["dynamicSecretName"],
        user_id=d["userId"],
        user_principal_name=d["userPrincipalName"],
        status=LeaseStatus(d["status"]),
        created_at=d["createdAt"],
        expires_at=d["expiresAt"],
        max_expires_at=d["maxExpiresAt"],
        renewed_at=d.get("renewedAt"),
        revoked_at=d.get("revokedAt"),
        revoked_by=d.get("revokedBy"),
        attempts=int(d.get("attempts") or 0),
        last_error=d.get("lastError"),
        next_attempt_at=d.get("nextAttemptAt"),
    )


async def ds_row(name: str) -> Row:
    row = await store.get_dynamic_secret(name) if _NAME.match(name) else None
    if row is None:
        raise NotFound(f"no dynamic secret is named {name!r}")
    return row


async def lease_row(lease_id: str) -> Row:
    row = await store.get_lease(lease_id)
    if row is None:
        raise NotFound(f"no lease has the id {lease_id!r}")
    return row


# ---------------------------------------------------------------------------- creating a lease


@dataclass
class PendingLease:
    """A lease between its intent and its activation."""

    row: Row
    intent_key: str


async def begin_lease(name: str, ttl: str | None, caller: Caller) -> PendingLease:
    """Steps 1-2: claim the user, write the intent and the `pending` lease. Nothing in Azure yet."""
    ds = await ds_row(name)
    maximum = parse_duration(ds.data["maxTtl"])
    wanted = _ttl(ttl, "ttl") if ttl else parse_duration(ds.data["defaultTtl"])
    if wanted > maximum:
        raise Unprocessable(
            "the TTL is above the dynamic secret's maxTtl",
            [FieldError("ttl", f"must be at most {ds.data['maxTtl']}")],
        )
    if wanted < MIN_TTL:
        raise Unprocessable(
            "the TTL is too short", [FieldError("ttl", f"must be at least {format_duration(MIN_TTL)}")]
        )
    now = clock.now()
    lease_id = store.new_lease_id(name)
    await _claim_user(name, ds.data["id"], lease_id, ds.data["userPrincipalName"])
    await _still_there(name, ds.data["id"], lease_id)
    expires = iso(now + wanted)
    due_key = store.index_key("due", expires, lease_id)
    intent_key = await store.write_intent(lease_id, iso(now), due_key)
    data = {
        "leaseId": lease_id,
        "dynamicSecretName": name,
        "dynamicSecretId": ds.data["id"],
        "tenantId": ds.data["tenantId"],
        "applicationId": ds.data["applicationId"],
        "credentialRef": ds.data["credentialRef"],
        "userId": ds.data["userId"],
        "userPrincipalName": ds.data["userPrincipalName"],
        "status": LeaseStatus.PENDING.value,
        "createdAt": iso(now),
        "expiresAt": expires,
        "maxExpiresAt": iso(now + maximum),
        "dueKey": due_key,
        "attempts": 0,
        "createdBy": caller.id,
    }
    return PendingLease(await store.insert_lease(lease_id, data), intent_key)


async def _still_there(name: str, ds_id: str, lease_id: str) -> None:
    """After the claim: the dynamic secret read before it must still exist.

    A delete holds the claim row for its whole run, so once this lease holds it no delete can
    run; one that ran between our read and our claim is seen here, and nothing was done yet.
    """
    current = await store.get_dynamic_secret(name)
    if current is None or current.data.get("id") != ds_id:
        await store.release_claim(name, lease_id)
        raise NotFound(f"no dynamic secret is named {name!r} (it was deleted meanwhile)")


async def _claim_user(name: str, ds_id: str, lease_id: str, upn: str) -> None:
    try:
        await store.insert_claim(name, lease_id)
        return
    except RowExists:
        claim = await store.get_claim(name)
    if claim is None:
        await store.insert_claim(name, lease_id)
        return
    holder = str(claim.data.get("leaseId"))
    if holder == f"{DELETING}{ds_id}":
        raise Conflict(f"the dynamic secret {name!r} is being deleted")
    age = clock.now() - parse_time(claim.data.get("claimedAt"))
    stale_marker = holder.startswith(DELETING)  # left by an earlier dynamic secret of this name
    if stale_marker or (age > RECONCILE_AFTER and await store.get_lease(holder) is None):
        try:  # a create died between its claim and its intent: nothing else refers to the claim
            await store.take_over_claim(claim, lease_id)
            return
        except ConcurrencyConflict:
            pass
    raise Conflict(
        f"{upn} already has an active lease {holder}; revoke it or wait for it to expire",
        extra={"activeLeaseId": holder},
        code="active-lease-exists",
    )


async def set_lease_password(pending: PendingLease) -> str:
    """Step 3: the one Graph call. Returns the password (kept in memory only)."""
    d = pending.row.data
    password = provider.generate_password()

    async def call(access: provider.AppAccess) -> None:
        await provider.set_password(access, d["userId"], password)

    async with azure_gateway.deadline(CREATE_BUDGET.total_seconds()):
        await provider.with_stored_access(
            d["tenantId"], d["applicationId"], await credential_ref(pending.row), call
        )
    return password


async def activate_lease(pending: PendingLease, caller: Caller) -> Row:
    """Step 4: `pending -> active` (ETag), then the intent goes."""
    data = {**pending.row.data, "status": LeaseStatus.ACTIVE.value}
    try:
        row = await store.replace_lease(pending.row, data)
    except ConcurrencyConflict:
        raise Unavailable(
            "the lease took too long to record and the reconciler reset its password; try again",
            headers={"Retry-After": "5"},
        ) from None
    await store.delete_index(row.rk, pending.intent_key)
    events.emit(
        "lease.created",
        leaseId=row.rk,
        dynamicSecretName=data["dynamicSecretName"],
        userId=data["userId"],
        expiresAt=data["expiresAt"],
    )
    await audit.record(caller, "lease.create", "lease", row.rk, detail=f"expires {data['expiresAt']}")
    return row


async def abandon_lease(pending: PendingLease, failure: AzureFailure, caller: Caller) -> Row | None:
    """The Graph call failed. If Azure surely changed nothing, undo everything; if the outcome
    is unknown (timeout, 5xx), hand the lease to the sweeper to reset now (`revoke_failed`)."""
    row = pending.row
    lease_id = row.rk
    if not failure.transient or failure.status == 429:
        await store.delete_lease_rows(row, with_claim=True)
        await store.delete_index(lease_id, pending.intent_key, str(row.data["dueKey"]))
        await audit.record(caller, "lease.create", "lease", lease_id, "failure", failure.describe())
        return None
    now = clock.now()
    due_key = store.index_key("due", iso(now), lease_id)
    data = {
        **row.data,
        "status": LeaseStatus.REVOKE_FAILED.value,
        "lastError": "creation: " + failure.describe(),
        "nextAttemptAt": iso(now),
        "dueKey": due_key,
    }
    try:
        row = await store.replace_lease(row, data)
    except ConcurrencyConflict:
        return None  # the reconciler took it
    await store.move_due(lease_id, str(pending.row.data["dueKey"]), due_key, str(data["createdAt"]))
    await store.delete_index(lease_id, pending.intent_key)
    await audit.record(caller, "lease.create", "lease", lease_id, "failure", data["lastError"])
    return row


async def create_lease(name: str, ttl: str | None, caller: Caller) -> LeaseCreated:
    pending = await begin_lease(name, ttl, caller)
    try:
        password = await set_lease_password(pending)
    except AzureFailure as failure:
        kept = await abandon_lease(pending, failure, caller)
        extra = {"leaseId": kept.rk, "leaseStatus": kept.data["status"]} if kept else {}
        raise azure_problem(failure, **extra) from None
    row = await activate_lease(pending, caller)
    return LeaseCreated(
        lease=lease_out(row),
        credentials=Credentials(user_principal_name=row.data["userPrincipalName"], password=password),
    )


# ---------------------------------------------------------------------------- reading, renewing


async def list_leases(name: str, status: LeaseStatus | None, limit: int) -> list[LeaseOut]:
    ds = await ds_row(name)
    rows = await store.list_leases(name, ds.data["id"], limit, status.value if status else None)
    return [lease_out(row) for row in rows]


async def get_lease(lease_id: str) -> LeaseOut:
    return lease_out(await lease_row(lease_id))


async def renew_lease(lease_id: str, ttl: str | None, caller: Caller) -> LeaseRenewed:
    """New expiry = now + ttl, never past createdAt + maxTtl (the response says when capped)."""
    row = await lease_row(lease_id)
    now = clock.now()
    if row.data["status"] != LeaseStatus.ACTIVE.value or parse_time(row.data["expiresAt"]) <= now:
        raise Conflict(
            f"only an active, unexpired lease can be renewed; this one is {row.data['status']}"
            + (" and expired" if parse_time(row.data["expiresAt"]) <= now else "")
        )
    ds = await store.get_dynamic_secret(row.data["dynamicSecretName"])
    cap = parse_time(row.data["maxExpiresAt"])
    default_ttl = ds.data["defaultTtl"] if ds else None
    if ds is not None:  # a lowered maxTtl applies to renewals of existing leases too
        cap = min(cap, parse_time(row.data["createdAt"]) + parse_duration(ds.data["maxTtl"]))
    if not ttl and not default_ttl:
        raise Unprocessable("give a ttl", [FieldError("ttl", "is required")])
    wanted = _ttl(ttl or str(default_ttl), "ttl")
    requested = now + wanted
    new_expiry = min(requested, cap)
    if new_expiry <= now:
        raise Conflict("the lease has reached its maximum lifetime and cannot be renewed")
    old_key = str(row.data["dueKey"])
    new_key = store.index_key("due", iso(new_expiry), lease_id)
    await store.add_due(lease_id, new_key, row.data["createdAt"])  # before the lease points at it
    data = {**row.data, "expiresAt": iso(new_expiry), "renewedAt": iso(now), "dueKey": new_key}
    try:
        row = await store.replace_lease(row, data)
    except ConcurrencyConflict:
        if new_key != old_key:
            await store.delete_index(lease_id, new_key)
        raise Conflict("the lease changed meanwhile (is it being revoked?); read it and try again") from None
    if new_key != old_key:
        await store.delete_index(lease_id, old_key)
    capped = requested > cap
    await audit.record(
        caller,
        "lease.renew",
        "lease",
        lease_id,
        detail=f"expires {data['expiresAt']}" + (" (capped)" if capped else ""),
    )
    return LeaseRenewed(
        lease=lease_out(row), capped=capped, requested_expires_at=iso(requested), max_expires_at=iso(cap)
    )
