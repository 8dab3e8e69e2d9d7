"""Dynamic secrets: one per user of an app, created after the app is validated in Entra ID.

The app's client secret is kept in the secret store under a name recorded on the row
(`credentialRef`); every write of a new secret uses a new name, and the row is switched to it
with an ETag write, so of two concurrent PATCHes the loser's secret is deleted, never kept.
Deleting holds the user's lease claim (a `(deleting)` marker) for its whole run, so no lease
starts meanwhile; a lease being created (claimed, not yet active) makes the delete a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from core import audit, clock, records
from core.auth import Caller
from core.azure_failure import AzureFailure
from core.errors import Conflict, FieldError, Unprocessable
from core.tables import ConcurrencyConflict, RowExists
from leases import provider, secret_copies
from leases import records as lease_rows
from leases.models import (
    TERMINAL,
    DynamicSecretCreate,
    DynamicSecretOut,
    DynamicSecretsCreated,
    DynamicSecretUpdate,
    LeaseStatus,
)
from leases.records import DELETING, DynamicSecret, LeaseClaim, SecretIntent, UserClaim
from leases.revoking import revoke_lease
from leases.service import abandoned, azure_problem, check_ttls, dynamic_secret

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


# ---------------------------------------------------------------------------- the user claim


async def _claim_user(tenant_id: str, user_id: str, name: str, ds_id: str) -> UserClaim:
    """Claim a user for one dynamic secret; `RowExists` naming the holder if taken.

    A claim left by a create that crashed before its dynamic secret row was written is taken
    over once abandoned (older than any create can take).
    """
    mine = UserClaim(tenant_id=tenant_id, user_id=user_id, name=name, ds_id=ds_id, claimed_at=clock.now())
    try:
        return await records.insert(mine)
    except RowExists:
        held = await records.get(UserClaim, tenant_id, user_id)
    if held is None:
        return await records.insert(mine)
    owner = await records.get(DynamicSecret, "ds", held.name)
    if (owner is not None and owner.id == held.ds_id) or not abandoned(held.claimed_at):
        raise RowExists(held.name)
    return await records.replace(mine.model_copy(update={"etag": held.etag}))


async def _release_user(tenant_id: str, user_id: str, ds_id: str) -> None:
    held = await records.get(UserClaim, tenant_id.lower(), user_id)
    if held is not None and held.ds_id == ds_id:
        await records.delete(held)


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

    now = clock.now()
    plan = [(name, user, uuid.uuid4().hex) for name, user in zip(names, users, strict=True)]
    claimed: list[UserClaim] = []
    intents: list[SecretIntent] = []
    inserted: list[DynamicSecret] = []

    try:
        for name, user, ds_id in plan:
            try:
                claimed.append(await _claim_user(tenant_id, user.id, name, ds_id))
            except RowExists as held:
                raise Conflict(
                    f"user {user.user_principal_name} is already served by dynamic secret {held.detail!r} "
                    "(one dynamic secret per user)",
                    extra={"dynamicSecretName": held.detail},
                ) from None
        intents.extend(await secret_copies.announce([secret_ref(ds_id) for _, _, ds_id in plan]))
        await secret_copies.write(intents, secret)
        for (name, user, ds_id), intent in zip(plan, intents, strict=True):
            ds = DynamicSecret(
                name=name,
                id=ds_id,
                prefix=prefix,
                tenant_id=tenant_id,
                application_id=body.application_id.lower(),
                user_id=user.id,
                user_principal_name=user.user_principal_name,
                default_ttl=body.default_ttl,
                max_ttl=body.max_ttl,
                credential_ref=intent.ref,
                created_at=now,
                updated_at=now,
                created_by=caller.id,
            )
            try:
                inserted.append(await secret_copies.commit_insert(ds, intent))
            except ConcurrencyConflict:
                raise Conflict(
                    f"the dynamic secret name {name!r} (derived for {user.user_principal_name}) is taken; "
                    "use another prefix",
                    [FieldError("prefix", f"{name!r} already exists")],
                    extra={"dynamicSecretName": name},
                ) from None
    except BaseException:
        for ds in inserted:
            await records.delete(ds, conditional=False)
        await secret_copies.discard(intents)
        for user_claim in claimed:
            await records.delete(user_claim)
        raise
    for ds in inserted:
        await audit.record(caller, "dynamic_secret.create", "dynamic-secret", ds.name)
    return DynamicSecretsCreated(
        items=[DynamicSecretOut.from_record(ds) for ds in inserted], warnings=warnings
    )


async def list_dynamic_secrets(limit: int) -> list[DynamicSecretOut]:
    return [DynamicSecretOut.from_record(ds) for ds in await lease_rows.list_dynamic_secrets(limit)]


async def get_dynamic_secret(name: str) -> DynamicSecretOut:
    return DynamicSecretOut.from_record(await dynamic_secret(name))


async def update_dynamic_secret(name: str, body: DynamicSecretUpdate, caller: Caller) -> DynamicSecretOut:
    """New TTLs (existing leases keep their expiry) and/or a new client secret (re-validated).

    A new secret is written under a new store name before the row (ETag) points at it: the
    loser of two concurrent PATCHes deletes its own copy, the winner the one it replaced.
    """
    ds = await dynamic_secret(name)
    if body.default_ttl is None and body.max_ttl is None and body.client_secret is None:
        raise Unprocessable(
            "nothing to change", [FieldError("body", "give defaultTtl, maxTtl or clientSecret")]
        )
    default_ttl, max_ttl = body.default_ttl or ds.default_ttl, body.max_ttl or ds.max_ttl
    check_ttls(default_ttl, max_ttl)
    changed = [
        k
        for k, new, old in (("defaultTtl", default_ttl, ds.default_ttl), ("maxTtl", max_ttl, ds.max_ttl))
        if new != old
    ]
    update = {"default_ttl": default_ttl, "max_ttl": max_ttl, "updated_at": clock.now()}
    if body.client_secret is None:
        try:
            updated = await records.replace(ds.model_copy(update=update))
        except ConcurrencyConflict:
            raise _changed() from None
    else:
        secret = body.client_secret.get_secret_value()
        await _check_new_secret(ds, secret)
        changed.append("clientSecret")
        intents = await secret_copies.announce([secret_ref(ds.id)], replaces=ds.credential_ref)
        updated = ds.model_copy(update={**update, "credential_ref": intents[0].ref})
        try:
            await secret_copies.write(intents, secret)
            committed = await secret_copies.commit_replace(updated, intents[0])
        except BaseException as error:
            await secret_copies.discard(intents)
            if isinstance(error, ConcurrencyConflict):
                raise _changed() from None
            raise
        await secret_copies.retire(committed)
    await audit.record(
        caller, "dynamic_secret.update", "dynamic-secret", name, detail="changed " + ", ".join(changed)
    )
    return DynamicSecretOut.from_record(updated)


async def _check_new_secret(ds: DynamicSecret, secret: str) -> None:
    """The new secret signs in as the same app, in the same tenant, and still reads the user."""
    tenant_id, application_id = ds.tenant_id, ds.application_id
    access = await provider.access_for_secret(tenant_id, application_id, secret)
    try:
        tenant_guid, _ = await _check_app(access, application_id)
        await provider.read_user(access, ds.user_id)
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

    ds = await dynamic_secret(name)
    marker = LeaseClaim(name=name, lease_id=f"{DELETING}{ds.id}", claimed_at=clock.now())
    for _ in range(5):
        try:
            await records.insert(marker)
            break
        except RowExists:
            pass
        claim = await lease_rows.get_claim(name)
        if claim is None:
            continue
        if claim.lease_id == marker.lease_id:
            break
        lease = None if claim.deleting else await lease_rows.get_lease(claim.lease_id)
        if lease is None and not claim.deleting and not abandoned(claim.claimed_at):
            raise _being_created(name, claim.lease_id)
        if lease is None or lease.status in TERMINAL:
            with contextlib.suppress(ConcurrencyConflict):  # someone else's claim now: look again
                await records.delete(claim)
            continue
        if lease.status == LeaseStatus.PENDING:
            raise _being_created(name, claim.lease_id)
        await revoke_lease(claim.lease_id, caller, force=False, reason="dynamic secret deleted")
    else:
        raise Conflict("leases keep being created for this dynamic secret; try again")
    await secret_store().delete(ds.credential_ref)
    provider.forget_secret(ds.credential_ref)
    await _release_user(ds.tenant_id, ds.user_id, ds.id)
    await records.delete(ds, conditional=False)
    await records.delete(marker, conditional=False)
    await audit.record(caller, "dynamic_secret.delete", "dynamic-secret", name)


def _changed() -> Conflict:
    return Conflict("the dynamic secret changed meanwhile; read it and try again")


def _being_created(name: str, lease_id: str) -> Conflict:
    return Conflict(
        f"a lease of {name!r} is being created ({lease_id}); delete again in a few seconds",
        extra={"activeLeaseId": lease_id},
        headers={"Retry-After": "5"},
    )
