"""Connection rows, their unique names, and their secret references, as typed records.

Tables (logical names; core.tables adds the deployment prefix):

- `AppConnections` (`ConnectionRecord`): PartitionKey = kind (`azure-client-secrets` |
  `azure-devops`), RowKey = connection id (a UUID). Plain metadata, the `credentialRev`, and
  `secretRefs` (purpose -> secret store name). Never a secret value.
- `AppConnectionNames` (`NameClaim`): PartitionKey = kind, RowKey = name. The insert of this row
  is how a name is claimed (RowExists -> 409), so two creates cannot take one name.

Secret material lives in the secret store under `secret_name(prefix, f"{id}-{rev}", purpose)`. The
`credentialRev` changes on every credential change, so a new credential gets new names; the row
flips to them with an ETag write (the one writer rule: nothing overwrites a row it did not read),
and cached credentials keyed by (id, rev) fall out of use on every instance at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Mapping
from datetime import timedelta

from pydantic import BaseModel, Field

from core import clock, records, tables
from core.errors import Conflict, FieldError, NotFound, Problem, Unavailable
from core.secret_store import secret_name, secret_store

log = logging.getLogger(__name__)

# A name claim whose connection row never appeared (a create that crashed) is free again after this.
STALE_CLAIM = timedelta(minutes=15)

KIND_PREFIX = {"azure-client-secrets": "azcs", "azure-devops": "azdo"}
KIND_LABEL = {"azure-client-secrets": "Azure Client Secrets", "azure-devops": "Azure DevOps"}


class ConnectionFields(BaseModel):
    """What a connection row and every kind's view of it share (connections.models.ConnectionView)."""

    id: str
    name: str
    description: str | None = None
    method: str
    status: str = "active"
    created_at: str
    updated_at: str
    created_by: str = ""


class ConnectionRecord(records.Record, ConnectionFields, table="AppConnections", pk="kind", rk="id"):
    """One connection row: plain metadata plus the names (never the values) of its secrets."""

    kind: str
    tenant_id: str | None = None
    client_id: str | None = None
    org_name: str | None = None
    credential_rev: str = ""
    # The Key ID (Secret ID) on the app of the client secret at `credential_rev`, when known: a
    # PATCH's rotation.clientSecretKeyId or a rotation's new secret. A rotation whose own record
    # missed a PATCH takes its Key ID from here.
    secret_key_id: str = ""
    secret_refs: dict[str, str] = Field(default_factory=dict)
    meta: dict[str, str] = Field(default_factory=dict)


class NameClaim(records.Record, table="AppConnectionNames", pk="kind", rk="name"):
    """A connection name taken by one connection of a kind."""

    kind: str
    name: str
    connection_id: str = ""
    claimed_at: str = ""


TABLE = ConnectionRecord.TABLE
DELETING = "deleting"  # the status of a connection whose DELETE has begun
NAMES_TABLE = NameClaim.TABLE


def new_id() -> str:
    return str(uuid.uuid4())


def new_rev() -> str:
    return secrets.token_hex(4)


def not_found(kind: str, connection_id: str) -> NotFound:
    return NotFound(f"no {KIND_LABEL.get(kind, kind)} connection with id {connection_id}")


# ---------------------------------------------------------------------------------------------- names


def _name_taken(kind: str, name: str) -> Conflict:
    return Conflict(
        f"a {KIND_LABEL.get(kind, kind)} connection named {name!r} already exists",
        [FieldError("name", "is taken; choose another name or delete the other connection")],
        code="name-taken",
    )


async def claim_name(kind: str, name: str, connection_id: str) -> None:
    """Take `name` for `connection_id`, or 409 if another connection of this kind holds it.

    A claim left by a create that died before inserting its row is taken over once it is
    older than STALE_CLAIM (with an ETag write, so two takers cannot both win).
    """
    taken = _name_taken(kind, name)
    for _ in range(3):
        claim = NameClaim(
            kind=kind, name=name, connection_id=connection_id, claimed_at=clock.isoformat(clock.now())
        )
        try:
            await records.insert(claim)
            return
        except tables.RowExists:
            pass
        existing = await records.get(NameClaim, kind, name)
        if existing is None:
            continue  # released between our insert and our read: try again
        if existing.connection_id == connection_id:
            return
        if await _held(existing):
            raise taken
        try:
            await records.replace(claim.model_copy(update={"etag": existing.etag}))
            return
        except tables.ConcurrencyConflict:
            raise taken from None
    raise taken


async def release_name(kind: str, name: str, connection_id: str) -> None:
    """Give `name` back, if `connection_id` still holds it."""
    claim = await records.get(NameClaim, kind, name)
    if claim is not None and claim.connection_id == connection_id:
        try:
            await records.delete(claim)
        except tables.ConcurrencyConflict:
            return


async def ensure_name_free(kind: str, name: str) -> None:
    """409 if a live connection (or a fresh claim) holds `name` (a fast pre-check; the claim decides)."""
    claim = await records.get(NameClaim, kind, name)
    if claim is not None and await _held(claim):
        raise _name_taken(kind, name)


async def _held(claim: NameClaim) -> bool:
    """A name claim is held while it is fresh or its connection row exists."""
    if claim.claimed_at >= clock.isoformat(clock.now() - STALE_CLAIM):
        return True
    return await records.get(ConnectionRecord, claim.kind, claim.connection_id) is not None


# ---------------------------------------------------------------------------------------------- rows


async def get_record(kind: str, connection_id: str) -> ConnectionRecord:
    """The connection, or 404."""
    if not connection_id or len(connection_id) > 64:
        raise not_found(kind, connection_id[:64])
    record = await records.get(ConnectionRecord, kind, connection_id)
    if record is None:
        raise not_found(kind, connection_id)
    return record


async def list_records(kind: str, limit: int = 1000) -> list[ConnectionRecord]:
    rows = await tables.partition(TABLE, kind, limit=limit)
    return sorted((ConnectionRecord.from_row(r) for r in rows), key=lambda r: r.name)


async def deleting(kind: str) -> list[ConnectionRecord]:
    """The connections of a kind whose DELETE has begun (and not finished)."""
    rows = tables.query(TABLE, "PartitionKey eq @pk and status eq @status", {"pk": kind, "status": DELETING})
    return [ConnectionRecord.from_row(row) async for row in rows]


# ---------------------------------------------------------------------------------------------- secrets


def secret_ref(kind: str, connection_id: str, rev: str, purpose: str) -> str:
    return secret_name(KIND_PREFIX[kind], f"{connection_id}-{rev}", purpose)


def _store_unavailable(error: Exception) -> Unavailable:
    # The SDK's text may hold anything; name the type only.
    return Unavailable(
        f"the secret store (Key Vault) failed ({type(error).__name__}); nothing was changed, try again",
        code="secret-store-unavailable",
    )


async def put_secrets(kind: str, connection_id: str, rev: str, values: Mapping[str, str]) -> dict[str, str]:
    """Store each value under this revision's name; returns purpose -> name for the row.

    On failure, whatever was written is deleted again and a 503 raised.
    """
    store = secret_store()
    refs = {purpose: secret_ref(kind, connection_id, rev, purpose) for purpose in values}
    results = await asyncio.gather(
        *(store.set(refs[p], v) for p, v in values.items()), return_exceptions=True
    )
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        await delete_secrets(refs)
        if isinstance(failed, Problem) or not isinstance(failed, Exception):
            raise failed
        raise _store_unavailable(failed)
    return refs


async def read_secret(record: ConnectionRecord, purpose: str) -> str:
    ref = record.secret_refs.get(purpose)
    if not ref:
        raise NotFound(f"connection {record.id} has no {purpose}", code="secret-missing")
    try:
        return await secret_store().get(ref)
    except Problem:
        raise
    except Exception as error:
        raise _store_unavailable(error) from None


async def delete_secrets(refs: Mapping[str, str]) -> None:
    """Best effort: a secret left behind is unreferenced (the row no longer names it)."""
    store = secret_store()
    results = await asyncio.gather(*(store.delete(name) for name in refs.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
        if isinstance(result, Exception):
            log.warning("could not delete an unreferenced secret (%s); it is orphaned", type(result).__name__)
