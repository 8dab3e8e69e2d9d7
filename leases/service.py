"""Dynamic secrets and leases: what the routes, the sweeper and the reconciler do.

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

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core import audit, clock, events
from core.auth import Caller
from core.durations import format_duration, parse_duration
from core.errors import (
    Conflict,
    FieldError,
    NotFound,
    Problem,
    Unavailable,
    Unprocessable,
    UpstreamError,
    UpstreamTimeout,
)
from core.tables import ConcurrencyConflict, Row, RowExists
from leases import provider, store
from leases.models import (
    TERMINAL,
    Credentials,
    DynamicSecretCreate,
    DynamicSecretOut,
    DynamicSecretsCreated,
    DynamicSecretUpdate,
    LeaseCreated,
    LeaseOut,
    LeaseRenewed,
    LeaseStatus,
)
from leases.provider import AzureFailure

log = logging.getLogger(__name__)

MIN_TTL = timedelta(minutes=1)
# An intent older than this belongs to a create that died; the reconciler resolves it.
# (A create takes a few seconds; Graph retries are bounded well below this.)
RECONCILE_AFTER = timedelta(minutes=3)
# How long a revoke claim lasts; a claim whose holder died is taken over after it.
CLAIM_FOR = timedelta(minutes=2)
BACKOFF_FIRST = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
READ_USERS_CONCURRENCY = 8
DELETING = "(deleting)"  # claim marker of a dynamic secret being deleted
NAME_MAX = 63
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


# ---------------------------------------------------------------------------- helpers


def iso(at: datetime) -> str:
    return clock.isoformat(at)


def parse_time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text))


def derive_name(prefix: str, user: provider.EntraUser) -> str:
    """`{prefix}-{mailNickname or UPN local part}`, lower-case `[a-z0-9-]`, at most 63 chars."""
    handle = user.mail_nickname or user.user_principal_name.split("@")[0]
    raw = f"{prefix}-{handle}".lower()
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")
    return name[:NAME_MAX].rstrip("-")


def secret_ref(ds_id: str) -> str:
    from core.secret_store import secret_name

    return secret_name("dynsecret", ds_id, "client-secret")


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
    """An Azure failure as the caller sees it: the step, Azure's code, and what to do."""
    details = {"step": failure.step, "azureCode": failure.code, **extra}
    detail = f"Azure step '{failure.step}' failed with {failure.code}: {failure.message}"
    if failure.status == 429:
        wait = str(failure.retry_after or 5)
        return Unavailable(detail, headers={"Retry-After": wait}, extra=details, code="azure-throttled")
    if failure.code == "timeout" or failure.status == 504:
        return UpstreamTimeout(detail, extra=details)
    if failure.transient:
        return Unavailable(detail, headers={"Retry-After": "5"}, extra=details, code="azure-unavailable")
    if validating:
        field = failure.field or "applicationId"
        return Unprocessable(
            detail, [FieldError(field, failure.message)], extra=details, code="azure-refused"
        )
    return UpstreamError(detail, extra=details, code="azure-refused")


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


async def _ds_row(name: str) -> Row:
    row = await store.get_dynamic_secret(name) if _NAME.match(name) else None
    if row is None:
        raise NotFound(f"no dynamic secret is named {name!r}")
    return row


async def _lease_row(lease_id: str) -> Row:
    row = await store.get_lease(lease_id)
    if row is None:
        raise NotFound(f"no lease has the id {lease_id!r}")
    return row


# ---------------------------------------------------------------------------- validation in Azure


async def _check_app(access: provider.AppAccess, application_id: str) -> tuple[str, list[str]]:
    """Token, permission and directory role of the app: (tenant GUID, warnings) or AzureFailure."""
    claims = await provider.app_token_claims(access)
    roles = provider.token_roles(claims)
    if not roles & set(provider.USER_WRITE_PERMISSIONS):
        raise AzureFailure(
            "permissions",
            403,
            "MissingPermission",
            "the app lacks the Microsoft Graph application permission User.ReadWrite.All "
            "(granted with admin consent); it has " + (", ".join(sorted(roles)) or "none"),
            field="applicationId",
        )
    warnings: list[str] = []
    try:
        held = await provider.directory_roles(access, application_id)
    except AzureFailure as failure:
        if failure.status != 403:
            raise
        warnings.append(
            "could not verify the app's directory role: reading its memberships needs Application.Read.All; "
            "without the User Administrator role, leases fail with Authorization_RequestDenied"
        )
    else:
        if not held & set(provider.PASSWORD_RESET_ROLES):
            raise AzureFailure(
                "directoryRole",
                403,
                "MissingDirectoryRole",
                "the app's service principal needs the User Administrator directory role "
                "(Entra ID > Roles and administrators) to set user passwords",
                field="applicationId",
            )
    return str(claims.get("tid") or ""), warnings


async def _read_users(access: provider.AppAccess, users: list[str]) -> list[provider.EntraUser]:
    semaphore = asyncio.Semaphore(READ_USERS_CONCURRENCY)
    missing: list[FieldError] = []

    async def read(index: int, who: str) -> provider.EntraUser | None:
        async with semaphore:
            try:
                return await provider.read_user(access, who)
            except AzureFailure as failure:
                if failure.status in (400, 404):
                    missing.append(FieldError(f"users.{index}", f"no user {who!r} in the tenant"))
                    return None
                raise

    found = await asyncio.gather(*(read(i, who) for i, who in enumerate(users)))
    if missing:
        raise Unprocessable("some users do not exist in the tenant", sorted(missing, key=lambda e: e.field))
    result = [user for user in found if user is not None]
    seen: dict[str, int] = {}
    errors = []
    for index, user in enumerate(result):
        if user.id in seen:
            errors.append(FieldError(f"users.{index}", f"the same user as users.{seen[user.id]}"))
        seen.setdefault(user.id, index)
    if errors:
        raise Unprocessable("a user is listed twice", errors)
    return result


# ---------------------------------------------------------------------------- dynamic secrets


async def create_dynamic_secrets(body: DynamicSecretCreate, caller: Caller) -> DynamicSecretsCreated:
    """Validate the app against Entra ID, then one dynamic secret per user (all or none)."""
    import uuid

    check_ttls(body.default_ttl, body.max_ttl)
    secret = body.client_secret.get_secret_value()
    access = await provider.access_for_secret(body.tenant_id, body.application_id, secret)
    try:
        tenant_guid, warnings = await _check_app(access, body.application_id)
        users = await _read_users(access, body.users)
    except AzureFailure as failure:
        await provider.drop_access(body.tenant_id, body.application_id, secret)
        raise azure_problem(failure, validating=True) from None
    tenant_id = (tenant_guid or body.tenant_id).lower()
    prefix = body.prefix.lower()
    names = [derive_name(prefix, user) for user in users]
    clashes = [
        FieldError(f"users.{i}", f"its name {name!r} is also derived for users.{names.index(name)}")
        for i, name in enumerate(names)
        if names.index(name) != i
    ]
    if clashes:
        raise Unprocessable("two users map to the same dynamic secret name", clashes)

    now = iso(clock.now())
    plan = [(name, user, uuid.uuid4().hex) for name, user in zip(names, users, strict=True)]
    claimed: list[tuple[str, str]] = []  # (user id, ds id)
    written_secrets: list[str] = []
    inserted: list[Row] = []
    from core.secret_store import secret_store

    try:
        for name, user, ds_id in plan:
            try:
                await store.claim_user(tenant_id, user.id, name, ds_id, RECONCILE_AFTER.total_seconds())
            except RowExists as held:
                raise Conflict(
                    f"user {user.user_principal_name} is already served by dynamic secret {held.detail!r} "
                    "(one dynamic secret per user)",
                    extra={"dynamicSecretName": held.detail},
                ) from None
            claimed.append((user.id, ds_id))
        refs = [secret_ref(ds_id) for _, _, ds_id in plan]
        written_secrets.extend(refs)  # before writing: a partial failure is undone too (delete is idempotent)
        await asyncio.gather(*(secret_store().set(ref, secret) for ref in refs))
        for (name, user, ds_id), ref in zip(plan, refs, strict=True):
            data = {
                "id": ds_id,
                "prefix": prefix,
                "tenantId": tenant_id,
                "applicationId": body.application_id.lower(),
                "userId": user.id,
                "userPrincipalName": user.user_principal_name,
                "defaultTtl": body.default_ttl,
                "maxTtl": body.max_ttl,
                "credentialRef": ref,
                "createdAt": now,
                "updatedAt": now,
                "createdBy": caller.id,
            }
            try:
                inserted.append(await store.insert_dynamic_secret(name, data))
            except RowExists:
                raise Conflict(
                    f"the dynamic secret name {name!r} (derived for {user.user_principal_name}) is taken; "
                    "use another prefix",
                    [FieldError("prefix", f"{name!r} already exists")],
                    extra={"dynamicSecretName": name},
                ) from None
    except BaseException:
        for row in inserted:
            await store.delete_dynamic_secret(row.rk, row.etag)
        for ref in written_secrets:
            await secret_store().delete(ref)
        for user_id, ds_id in claimed:
            await store.release_user(tenant_id, user_id, ds_id)
        raise
    for row in inserted:
        await audit.record(caller, "dynamic_secret.create", "dynamic-secret", row.rk)
    return DynamicSecretsCreated(items=[ds_out(row) for row in inserted], warnings=warnings)


async def list_dynamic_secrets(limit: int) -> list[DynamicSecretOut]:
    return [ds_out(row) for row in await store.list_dynamic_secrets(limit)]


async def get_dynamic_secret(name: str) -> DynamicSecretOut:
    return ds_out(await _ds_row(name))


async def update_dynamic_secret(name: str, body: DynamicSecretUpdate, caller: Caller) -> DynamicSecretOut:
    """New TTLs (existing leases keep their expiry) and/or a new client secret (re-validated)."""
    row = await _ds_row(name)
    if body.default_ttl is None and body.max_ttl is None and body.client_secret is None:
        raise Unprocessable(
            "nothing to change", [FieldError("body", "give defaultTtl, maxTtl or clientSecret")]
        )
    data = dict(row.data)
    data["defaultTtl"] = body.default_ttl or data["defaultTtl"]
    data["maxTtl"] = body.max_ttl or data["maxTtl"]
    check_ttls(data["defaultTtl"], data["maxTtl"])
    changed = [k for k in ("defaultTtl", "maxTtl") if data[k] != row.data[k]]
    if body.client_secret is not None:
        secret = body.client_secret.get_secret_value()
        access = await provider.access_for_secret(data["tenantId"], data["applicationId"], secret)
        try:
            tenant_guid, _ = await _check_app(access, data["applicationId"])
            await provider.read_user(access, data["userId"])
        except AzureFailure as failure:
            await provider.drop_access(data["tenantId"], data["applicationId"], secret)
            raise azure_problem(failure, validating=True) from None
        if tenant_guid and tenant_guid.lower() != data["tenantId"]:
            raise Unprocessable(
                "the client secret signs in to another tenant",
                [FieldError("clientSecret", "must belong to the dynamic secret's app and tenant")],
            )
        from core.secret_store import secret_store

        await secret_store().set(data["credentialRef"], secret)
        provider.forget_secret(data["credentialRef"])
        changed.append("clientSecret")
    data["updatedAt"] = iso(clock.now())
    try:
        row = await store.replace_dynamic_secret(row, data)
    except ConcurrencyConflict:
        raise Conflict("the dynamic secret changed meanwhile; read it and try again") from None
    await audit.record(
        caller, "dynamic_secret.update", "dynamic-secret", name, detail="changed " + ", ".join(changed)
    )
    return ds_out(row)


async def delete_dynamic_secret(name: str, caller: Caller) -> None:
    """Revoke the live lease, hold the claim against new ones, then delete the secret and rows.

    The claim row is held with a marker naming this dynamic secret's id until the very end, so
    no lease can start meanwhile; a crash leaves the row, and DELETE can simply be repeated.
    """
    from core.secret_store import secret_store

    row = await _ds_row(name)
    marker = f"{DELETING}{row.data['id']}"
    for _ in range(5):
        try:
            await store.insert_claim(name, marker)
            break
        except RowExists:
            pass
        claim = await store.get_claim(name)
        if claim is None:
            continue
        holder = str(claim.data.get("leaseId"))
        if holder == marker:
            break
        lease = None if holder.startswith(DELETING) else await store.get_lease(holder)
        if lease is None or lease.data.get("status") in TERMINAL:
            await store.delete_claim(claim)
            continue
        await revoke_lease(holder, caller, force=False, reason="dynamic secret deleted")
    else:
        raise Conflict("leases keep being created for this dynamic secret; try again")
    await secret_store().delete(row.data["credentialRef"])
    provider.forget_secret(row.data["credentialRef"])
    await store.release_user(row.data["tenantId"], row.data["userId"], row.data["id"])
    await store.delete_dynamic_secret(name, None)
    await store.delete_claim(None, name)
    await audit.record(caller, "dynamic_secret.delete", "dynamic-secret", name)


# ---------------------------------------------------------------------------- creating a lease


@dataclass
class PendingLease:
    """A lease between its intent and its activation."""

    row: Row
    intent_key: str


async def begin_lease(name: str, ttl: str | None, caller: Caller) -> PendingLease:
    """Steps 1-2: claim the user, write the intent and the `pending` lease. Nothing in Azure yet."""
    ds = await _ds_row(name)
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

    await provider.with_stored_access(d["tenantId"], d["applicationId"], d["credentialRef"], call)
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
    ds = await _ds_row(name)
    rows = await store.list_leases(name, ds.data["id"], limit, status.value if status else None)
    return [lease_out(row) for row in rows]


async def get_lease(lease_id: str) -> LeaseOut:
    return lease_out(await _lease_row(lease_id))


async def renew_lease(lease_id: str, ttl: str | None, caller: Caller) -> LeaseRenewed:
    """New expiry = now + ttl, never past createdAt + maxTtl (the response says when capped)."""
    row = await _lease_row(lease_id)
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


# ---------------------------------------------------------------------------- revoking


def due_time(row: Row) -> datetime:
    """When the sweeper should act on a lease in its current state."""
    d = row.data
    status = d["status"]
    if status == LeaseStatus.REVOKE_FAILED.value:
        return parse_time(d.get("nextAttemptAt") or d["expiresAt"])
    if status == LeaseStatus.REVOKING.value:
        return parse_time(d.get("claimUntil") or d["expiresAt"])
    return parse_time(d["expiresAt"])


async def claim_for_revoke(row: Row, holder: str) -> Row:
    """`-> revoking` with a claim until now + CLAIM_FOR (ETag: two claimants, one wins)."""
    data = {
        **row.data,
        "status": LeaseStatus.REVOKING.value,
        "claimUntil": iso(clock.now() + CLAIM_FOR),
        "claimedBy": holder,
    }
    return await store.replace_lease(row, data)


async def reset_password(row: Row, *, max_retries: int = 3) -> None:
    """Set an unknown random password: the leased one stops working."""
    d = row.data

    async def call(access: provider.AppAccess) -> None:
        await provider.set_password(
            access, d["userId"], provider.generate_password(), max_retries=max_retries
        )

    await provider.with_stored_access(d["tenantId"], d["applicationId"], d["credentialRef"], call)


async def complete_revoke(row: Row, revoked_by: str, caller: Caller, *, detail: str = "") -> Row:
    now = clock.now()
    data = {
        **row.data,
        "status": LeaseStatus.REVOKED.value,
        "revokedAt": iso(now),
        "revokedBy": revoked_by,
        "claimUntil": None,
        "claimedBy": None,
        "nextAttemptAt": None,
    }
    row = await store.finish_lease(row, data)
    late = max(0, int((now - parse_time(data["expiresAt"])).total_seconds()))
    events.emit(
        "lease.revoked",
        leaseId=row.rk,
        dynamicSecretName=data["dynamicSecretName"],
        revokedBy=revoked_by,
        lateSeconds=late,
    )
    await audit.record(caller, "lease.revoke", "lease", row.rk, detail=detail or f"revoked by {revoked_by}")
    return row


async def record_failure(row: Row, failure: AzureFailure, caller: Caller) -> Row:
    """`revoke_failed`: keep the record, note the error, and move the due entry to the retry time."""
    now = clock.now()
    attempts = int(row.data.get("attempts") or 0) + 1
    delay = max(backoff(attempts), timedelta(seconds=failure.retry_after or 0))
    next_at = iso(now + delay)
    due_key = store.index_key("due", next_at, row.rk)
    data = {
        **row.data,
        "status": LeaseStatus.REVOKE_FAILED.value,
        "attempts": attempts,
        "lastError": failure.describe(),
        "nextAttemptAt": next_at,
        "dueKey": due_key,
        "claimUntil": None,
        "claimedBy": None,
    }
    new_row = await store.replace_lease(row, data)
    await store.move_due(row.rk, str(row.data["dueKey"]), due_key, str(data["createdAt"]))
    events.emit(
        "lease.revoke_failed",
        level=logging.WARNING,
        leaseId=row.rk,
        dynamicSecretName=data["dynamicSecretName"],
        error=data["lastError"],
        attempts=attempts,
        nextAttemptAt=next_at,
    )
    await audit.record(caller, "lease.revoke", "lease", row.rk, "failure", data["lastError"])
    return new_row


async def forget_lease(row: Row, failure: AzureFailure, caller: Caller) -> Row:
    """`forgotten`: an Admin gives up on a lease Azure refuses to revoke (audited; the password
    may still work in Azure, which the audit entry says)."""
    data = {
        **row.data,
        "status": LeaseStatus.FORGOTTEN.value,
        "revokedAt": iso(clock.now()),
        "revokedBy": caller.id,
        "lastError": failure.describe(),
        "claimUntil": None,
        "claimedBy": None,
        "nextAttemptAt": None,
    }
    row = await store.finish_lease(row, data)
    await audit.record(
        caller,
        "lease.force_forget",
        "lease",
        row.rk,
        detail="forgotten without revocation; the password may still work: " + failure.describe(),
    )
    events.emit(
        "lease.revoke_failed", level=logging.WARNING, leaseId=row.rk, error="forgotten: " + failure.describe()
    )
    return row


async def revoke_lease(lease_id: str, caller: Caller, *, force: bool, reason: str = "") -> LeaseOut:
    """Revoke now. With `force`, a lease Azure refuses to revoke is forgotten instead of kept."""
    row = await _lease_row(lease_id)
    status = row.data["status"]
    if status in TERMINAL:
        return lease_out(row)
    if status == LeaseStatus.PENDING.value:
        raise Conflict("the lease is still being created; try again in a few seconds")
    if status == LeaseStatus.REVOKING.value and parse_time(row.data.get("claimUntil")) > clock.now():
        raise Conflict(f"the lease is being revoked by {row.data.get('claimedBy')}; read it again shortly")
    try:
        claimed = await claim_for_revoke(row, f"api:{caller.id}")
    except ConcurrencyConflict:
        raise Conflict("the lease changed meanwhile (another revoke?); read it again") from None
    try:
        await reset_password(claimed)
    except AzureFailure as failure:
        if force:
            return lease_out(await forget_lease(claimed, failure, caller))
        failed = await record_failure(claimed, failure, caller)
        raise azure_problem(
            failure,
            leaseId=lease_id,
            leaseStatus=failed.data["status"],
            nextAttemptAt=failed.data["nextAttemptAt"],
        ) from None
    detail = f"revoked by {caller.name}" + (f" ({reason})" if reason else "")
    return lease_out(await complete_revoke(claimed, caller.id, caller, detail=detail))
