"""Dynamic secrets: one per user of an app, created after the app is validated in Entra ID.

The app's client secret is kept in the secret store under a name recorded on the row
(`credentialRef`); every write of a new secret uses a new name, and the row is switched to it
with an ETag write, so of two concurrent PATCHes the loser's secret is deleted, never kept.
Deleting holds the user's lease claim (a `(deleting)` marker) for its whole run, so no lease
starts meanwhile; a lease being created (claimed, not yet active) makes the delete a 409.
"""

from __future__ import annotations

import asyncio
import re

from core import audit, clock
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.errors import Conflict, FieldError, Unprocessable
from core.tables import ConcurrencyConflict, Row, RowExists
from leases import provider, store
from leases.models import (
    TERMINAL,
    DynamicSecretCreate,
    DynamicSecretOut,
    DynamicSecretsCreated,
    DynamicSecretUpdate,
    LeaseStatus,
)
from leases.revoking import revoke_lease
from leases.service import (
    DELETING,
    RECONCILE_AFTER,
    azure_problem,
    check_ttls,
    ds_out,
    ds_row,
    iso,
    parse_time,
)

READ_USERS_CONCURRENCY = 8
NAME_MAX = 63


def derive_name(prefix: str, user: provider.EntraUser) -> str:
    """`{prefix}-{mailNickname or UPN local part}`, lower-case `[a-z0-9-]`, at most 63 chars."""
    handle = user.mail_nickname or user.user_principal_name.split("@")[0]
    raw = f"{prefix}-{handle}".lower()
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")
    return name[:NAME_MAX].rstrip("-")


def secret_ref(ds_id: str) -> str:
    """A new secret-store name for the app's client secret: each write gets its own, so two
    PATCHes never overwrite each other's value and the loser's is deleted (see update)."""
    import uuid

    from core.secret_store import secret_name

    return secret_name("dynsecret", ds_id, f"client-secret-{uuid.uuid4().hex[:12]}")


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
    return ds_out(await ds_row(name))


async def update_dynamic_secret(name: str, body: DynamicSecretUpdate, caller: Caller) -> DynamicSecretOut:
    """New TTLs (existing leases keep their expiry) and/or a new client secret (re-validated).

    A new secret is written under a new store name before the row (ETag) points at it: the
    loser of two concurrent PATCHes deletes its own copy, the winner the one it replaced.
    """
    from core.secret_store import secret_store

    row = await ds_row(name)
    if body.default_ttl is None and body.max_ttl is None and body.client_secret is None:
        raise Unprocessable(
            "nothing to change", [FieldError("body", "give defaultTtl, maxTtl or clientSecret")]
        )
    data = dict(row.data)
    data["defaultTtl"] = body.default_ttl or data["defaultTtl"]
    data["maxTtl"] = body.max_ttl or data["maxTtl"]
    check_ttls(data["defaultTtl"], data["maxTtl"])
    changed = [k for k in ("defaultTtl", "maxTtl") if data[k] != row.data[k]]
    new_ref = None
    if body.client_secret is not None:
        secret = body.client_secret.get_secret_value()
        await _check_new_secret(data, secret)
        new_ref = data["credentialRef"] = secret_ref(str(data["id"]))
        await secret_store().set(new_ref, secret)
        changed.append("clientSecret")
    data["updatedAt"] = iso(clock.now())
    try:
        updated = await store.replace_dynamic_secret(row, data)
    except ConcurrencyConflict:
        if new_ref is not None:
            await secret_store().delete(new_ref)
        raise Conflict("the dynamic secret changed meanwhile; read it and try again") from None
    if new_ref is not None:
        await secret_store().delete(str(row.data["credentialRef"]))
        provider.forget_secret(str(row.data["credentialRef"]))
    await audit.record(
        caller, "dynamic_secret.update", "dynamic-secret", name, detail="changed " + ", ".join(changed)
    )
    return ds_out(updated)


async def _check_new_secret(data: dict[str, object], secret: str) -> None:
    """The new secret signs in as the same app, in the same tenant, and still reads the user."""
    tenant_id, application_id = str(data["tenantId"]), str(data["applicationId"])
    access = await provider.access_for_secret(tenant_id, application_id, secret)
    try:
        tenant_guid, _ = await _check_app(access, application_id)
        await provider.read_user(access, str(data["userId"]))
    except AzureFailure as failure:
        await provider.drop_access(tenant_id, application_id, secret)
        raise azure_problem(failure, validating=True) from None
    if tenant_guid and tenant_guid.lower() != tenant_id:
        raise Unprocessable(
            "the client secret signs in to another tenant",
            [FieldError("clientSecret", "must belong to the dynamic secret's app and tenant")],
        )


async def delete_dynamic_secret(name: str, caller: Caller) -> None:
    """Revoke the live lease, hold the claim against new ones, then delete the secret and rows.

    The claim row is held with a marker naming this dynamic secret's id until the very end, so
    no lease can start meanwhile; a crash leaves the row, and DELETE can simply be repeated.
    A lease still being created (claimed, its row missing or `pending`) is a 409: its creator
    is about to hand out a password, which must stay revocable through this dynamic secret.
    """
    from core.secret_store import secret_store

    row = await ds_row(name)
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
        if lease is None and not holder.startswith(DELETING) and not _abandoned(claim):
            raise _being_created(name, holder)
        if lease is None or lease.data.get("status") in TERMINAL:
            await store.delete_claim(claim)
            continue
        if lease.data.get("status") == LeaseStatus.PENDING.value:
            raise _being_created(name, holder)
        await revoke_lease(holder, caller, force=False, reason="dynamic secret deleted")
    else:
        raise Conflict("leases keep being created for this dynamic secret; try again")
    await secret_store().delete(row.data["credentialRef"])
    provider.forget_secret(row.data["credentialRef"])
    await store.release_user(row.data["tenantId"], row.data["userId"], row.data["id"])
    await store.delete_dynamic_secret(name, None)
    await store.delete_claim(None, name)
    await audit.record(caller, "dynamic_secret.delete", "dynamic-secret", name)


def _abandoned(claim: Row) -> bool:
    """A claim whose create died before writing its lease (older than any create can take)."""
    return clock.now() - parse_time(claim.data.get("claimedAt")) > RECONCILE_AFTER


def _being_created(name: str, lease_id: str) -> Conflict:
    return Conflict(
        f"a lease of {name!r} is being created ({lease_id}); delete again in a few seconds",
        extra={"activeLeaseId": lease_id},
        headers={"Retry-After": "5"},
    )
