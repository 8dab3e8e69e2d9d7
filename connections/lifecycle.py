"""Create, update and delete of a connection, the same for every kind.

A kind describes itself with a `KindSpec` (its credential models, how to turn credentials into
secret material, how to prove them against Azure); this module does the rest in one order:

create:  claim the name (insert) -> validate against Azure -> store secrets -> insert the row
         -> the kind's hooks (`created`; a refusal rolls the create back).
update:  read the row (ETag) -> If-Match and the hooks' preconditions (`prepare_update`) ->
         validate new credentials -> claim a new name -> store secrets under a new revision ->
         replace the row with its ETag (a lost race is a 409 and undoes our writes) -> drop the
         old secrets and name, invalidate cached clients -> the hooks (`updated`).
delete:  read the row -> If-Match (412 before anything) -> claim the row (`deleting`, ETag) ->
         the hooks (`deleting`, within the claim) -> delete the row (ETag) -> drop secrets and
         name, invalidate cached clients. A DELETE that fails half-way is sent again by the
         reconciler (connections.reconciler) once its claim has run out.

Every precondition is checked before any side effect; every step that fails undoes what this
request wrote; every outcome is audited. Hooks (rotation) come from core.connection_seam.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from connections import kinds, oauth, store
from connections.kinds import ConnectionChanges, KindSpec, Material, check_etag, merged_credentials
from connections.store import ConnectionRecord
from core import audit, azure_gateway, clock, records
from core.auth import Caller
from core.connection_seam import ConnectionFacts, UpdatePlan, hooks_for
from core.errors import Conflict, FieldError, Problem, Unprocessable


def _with_identity(record: ConnectionRecord, credentials: Any) -> ConnectionRecord:
    """The record with the credentials' non-secret identifiers (tenant, client id, organization)."""
    return record.model_copy(
        update={
            "tenant_id": getattr(credentials, "tenant_id", None),
            "client_id": getattr(credentials, "client_id", None),
            "org_name": getattr(credentials, "org_name", None),
        }
    )


def facts_of(spec: KindSpec, record: ConnectionRecord) -> ConnectionFacts:
    return ConnectionFacts(
        kind=record.kind,
        id=record.id,
        method=record.method,
        tenant_id=record.tenant_id or "",
        client_id=record.client_id or "",
        credential_rev=record.credential_rev,
        resource=spec.resource,
        deleting=record.status == store.DELETING,
        secret_key_id=record.secret_key_id,
    )


async def _audit_failure(spec: KindSpec, caller: Caller, action: str, subject: str, problem: Problem) -> None:
    step = problem.extra.get("step", "")
    code = problem.extra.get("azureCode", "")
    prefix = f"{step} {code}: ".strip() if step else ""
    await audit.record(
        caller, action, spec.resource, subject, "failure", detail=f"{prefix} {problem.detail}".strip()
    )


async def validated(
    spec: KindSpec,
    caller: Caller,
    subject: str,
    record: ConnectionRecord,
    material: Material,
    *,
    check_app: Callable[[Any], None] | None = None,
) -> None:
    """Prove the credentials against Azure; a refusal is audited (connection.validate) and raised."""
    try:
        read = await spec.validate(record, material[0], material[2])
        if check_app is not None and read is not None:
            check_app(read)
    except Problem as problem:
        await _audit_failure(spec, caller, "connection.validate", subject, problem)
        raise


async def create(
    spec: KindSpec,
    name: str,
    description: str | None,
    method: str,
    credentials: Any,
    caller: Caller,
    extension: BaseModel | None = None,
) -> tuple[ConnectionRecord, BaseModel | None]:
    """Validate and store a new connection of `spec.kind`, then run its hooks (the view they show).

    A hook that refuses (e.g. rotation settings that do not fit the app) rolls the create back.
    """
    record = await _create_row(spec, name, description, method, credentials, caller)
    hooks = hooks_for(spec.kind)
    if hooks is None or method not in hooks.methods:
        return record, None
    try:
        shown = await hooks.created(facts_of(spec, record), extension, caller)
    except Problem as problem:
        await rollback_create(spec, record.id, caller, f"{hooks.field} refused: {problem.detail}")
        raise
    except BaseException:
        await rollback_create(spec, record.id, caller, f"{hooks.field} failed")
        raise
    return record, shown


async def _create_row(
    spec: KindSpec, name: str, description: str | None, method: str, credentials: Any, caller: Caller
) -> ConnectionRecord:
    material = spec.material(method, credentials)
    now = clock.isoformat(clock.now())
    record = _with_identity(
        ConnectionRecord(
            kind=spec.kind,
            id=store.new_id(),
            name=name,
            method=method,
            description=description,
            credential_rev=store.new_rev(),
            meta=material[1],
            created_at=now,
            updated_at=now,
            created_by=caller.name,
        ),
        credentials,
    )
    await store.claim_name(spec.kind, name, record.id)
    try:
        await validated(spec, caller, name, record, material)
    except BaseException:
        await store.release_name(spec.kind, name, record.id)
        raise
    return await insert(spec, record, material[0], caller)


async def insert(
    spec: KindSpec, record: ConnectionRecord, secrets: dict[str, str], caller: Caller, *, claimed: bool = True
) -> ConnectionRecord:
    """Store the secrets and insert the row (the name is already claimed unless `claimed=False`)."""
    if not claimed:
        await store.claim_name(spec.kind, record.name, record.id)
    refs: dict[str, str] = {}
    try:
        refs = await store.put_secrets(spec.kind, record.id, record.credential_rev, secrets)
        record = await records.insert(record.model_copy(update={"secret_refs": refs}))
    except BaseException:
        await store.delete_secrets(refs)
        await store.release_name(spec.kind, record.name, record.id)
        raise
    await audit.record(
        caller,
        "connection.create",
        spec.resource,
        record.id,
        detail=f"name={record.name} method={record.method}",
    )
    return record


async def insert_oauth(
    spec: KindSpec,
    pending: oauth.PendingAuthorization,
    tokens: oauth.TokenSet,
    tenant_id: str,
    user: str,
    *,
    org_name: str | None = None,
) -> ConnectionRecord:
    """Create the OAuth connection of a completed (and validated) authorization: claim its name,
    store its refresh token, insert the row."""
    assert tokens.refresh_token  # oauth.check_grant refused a grant without one
    now = clock.isoformat(clock.now())
    record = ConnectionRecord(
        kind=spec.kind,
        id=store.new_id(),
        name=str(pending.params["name"]),
        method="oauth",
        description=pending.params.get("description"),
        tenant_id=tenant_id,
        client_id=oauth.operator_app(oauth.kind_of(spec.kind)).client_id,
        org_name=org_name,
        credential_rev=store.new_rev(),
        meta={"user": user},
        created_at=now,
        updated_at=now,
        created_by=pending.caller.name,
    )
    return await insert(spec, record, {"refreshToken": tokens.refresh_token}, pending.caller, claimed=False)


async def update(
    spec: KindSpec,
    connection_id: str,
    changes: ConnectionChanges,
    caller: Caller,
    *,
    if_match: str | None,
    extension: BaseModel | None = None,
) -> tuple[ConnectionRecord, BaseModel | None]:
    """Apply a PATCH; of two concurrent PATCHes one wins and the other gets a 409.

    Returns the record (with its new ETag) and the hooks' view. Preconditions (If-Match, the
    hooks' `prepare_update`, the credentials' shape) are checked before anything is written.
    """
    record = await store.get_record(spec.kind, connection_id)
    check_etag(record, if_match)
    refuse_if_deleting(record)
    hooks = hooks_for(spec.kind)
    if hooks is not None and extension is not None and record.method not in hooks.methods:
        raise Unprocessable(
            f"{hooks.field} is not available for method {record.method}",
            [FieldError(hooks.field, f"is only available for method {', '.join(sorted(hooks.methods))}")],
        )
    plan: UpdatePlan | None = None
    if hooks is not None and record.method in hooks.methods:
        plan = await hooks.prepare_update(facts_of(spec, record), extension, changes.credentials)
    changed = changes.name is not None or changes.description_set or changes.credentials is not None
    if changed or if_match is not None:
        record = await _update_row(spec, record, changes, caller, plan)
    if hooks is None or plan is None:
        return record, None
    try:
        shown = await hooks.updated(facts_of(spec, record), extension, plan, caller)
    except Problem as problem:
        if changed:
            problem.detail = (
                f"The connection was updated, but its {hooks.field} settings were not: {problem.detail}"
            )
        raise
    return record, shown


async def _update_row(
    spec: KindSpec,
    record: ConnectionRecord,
    changes: ConnectionChanges,
    caller: Caller,
    plan: UpdatePlan | None,
) -> ConnectionRecord:
    """Validate, store and write the changes (the row's ETag decides a race: 409, ours undone)."""
    updated = record.model_copy(update={"updated_at": clock.isoformat(clock.now())})
    if changes.description_set:
        updated.description = changes.description
    renamed = changes.name is not None and changes.name != record.name
    material: Material | None = None
    if changes.credentials is not None:
        credentials = await merged_credentials(spec, record, changes.credentials)
        material = spec.material(record.method, credentials)
        updated = _with_identity(
            updated.model_copy(update={"meta": material[1], "credential_rev": store.new_rev()}), credentials
        )
        if plan is not None and plan.secret_key_id is not None:
            updated.secret_key_id = plan.secret_key_id
        await validated(
            spec, caller, record.id, updated, material, check_app=plan.check_app if plan else None
        )
    if renamed:
        assert changes.name is not None
        await store.claim_name(spec.kind, changes.name, record.id)
        updated.name = changes.name
    new_refs: dict[str, str] = {}
    try:
        if material is not None:
            new_refs = await store.put_secrets(spec.kind, record.id, updated.credential_rev, material[0])
            updated.secret_refs = new_refs
        updated = await records.replace(updated)
    except BaseException:
        await store.delete_secrets(new_refs)
        if renamed:
            await store.release_name(spec.kind, updated.name, record.id)
        raise
    if renamed:
        await store.release_name(spec.kind, record.name, record.id)
    if material is not None:
        await kinds.invalidate(spec, record)
        await store.delete_secrets(record.secret_refs)
    changed = [
        label
        for label, flag in (
            ("name", renamed),
            ("description", changes.description_set),
            ("credentials", material is not None),
        )
        if flag
    ]
    await audit.record(
        caller,
        "connection.update",
        spec.resource,
        record.id,
        detail="changed: " + (", ".join(changed) or "nothing"),
    )
    return updated


# A DELETE's claim on its row: its Azure calls end by then; the reconciler finishes it after.
DELETE_CLAIM = timedelta(minutes=5)


def refuse_if_deleting(record: ConnectionRecord) -> None:
    """A connection whose DELETE has begun takes no PATCH (retry the DELETE to finish it)."""
    if record.status == store.DELETING:
        raise Conflict(
            f"connection {record.id} is being deleted; send the DELETE again to finish it",
            code="connection-deleting",
        )


async def delete(
    spec: KindSpec, connection_id: str, caller: Caller, *, if_match: str | None
) -> ConnectionRecord:
    """Forget a connection and its secret material; its hooks first (rotation removes the
    broker-made secrets from the app). A stale If-Match is a 412 before anything happens."""
    record = await store.get_record(spec.kind, connection_id)
    check_etag(record, if_match)
    # One writer: the row is claimed under the ETag just read before any side effect, so a PATCH
    # that wrote meanwhile makes this a 409 with nothing changed, and from here on every other
    # writer (PATCH, a secret switch) refuses the connection. A DELETE sent again re-claims it.
    claimed = clock.now()
    record = await records.replace(
        record.model_copy(update={"status": store.DELETING, "updated_at": clock.isoformat(claimed)})
    )
    async with azure_gateway.deadline(claimed + DELETE_CLAIM):
        await _deleting(spec, record, caller)
    await _remove(spec, record)
    await audit.record(caller, "connection.delete", spec.resource, record.id, detail=f"name={record.name}")
    return record


async def _deleting(spec: KindSpec, record: ConnectionRecord, caller: Caller) -> None:
    """The kind's hooks before a connection goes (rotation removes the broker-made secrets)."""
    hooks = hooks_for(spec.kind)
    if hooks is not None and record.method in hooks.methods:
        await hooks.deleting(facts_of(spec, record), caller)


async def rollback_create(spec: KindSpec, connection_id: str, caller: Caller, reason: str) -> None:
    """Undo a create whose follow-up step was refused or died; audited as a failed create.

    Its hooks go first, as in a DELETE (rotation removes every broker-made secret from the app,
    with the connection's own credentials). If they refuse (the create's first rotation is still
    in flight: it died between its steps) the connection stays, for the reconciler's takeover to
    finish or undo that run with its credentials; removing it would strand what the run added.
    """
    try:
        record = await store.get_record(spec.kind, connection_id)
    except Problem:
        return
    try:
        await _deleting(spec, record, caller)
    except Problem as refused:
        await audit.record(
            caller,
            "connection.create",
            spec.resource,
            record.id,
            "failure",
            detail=f"{reason}; kept, not rolled back: {refused.detail}",
        )
        return
    await _remove(spec, record.model_copy(update={"etag": None}))
    await audit.record(
        caller, "connection.create", spec.resource, record.id, "failure", detail=f"rolled back: {reason}"
    )


async def _remove(spec: KindSpec, record: ConnectionRecord) -> None:
    """Delete the row (with its ETag, if it carries one), then its secrets, name and cached clients."""
    await records.delete(record, conditional=record.etag is not None)
    await kinds.invalidate(spec, record)
    await store.delete_secrets(record.secret_refs)
    await store.release_name(spec.kind, record.name, record.id)


async def view_extension(spec: KindSpec, record: ConnectionRecord) -> BaseModel | None:
    """The hooks' block of a connection as reads show it (None if the kind has none)."""
    hooks = hooks_for(spec.kind)
    if hooks is None or record.method not in hooks.methods:
        return None
    return await hooks.describe(record.id)
