"""Tables of dynamic secrets and leases, and the index that makes sweeps cost what is due.

Tables and keys (property names are camelCase; times are `clock.isoformat` strings):

- `DynamicSecrets`  PK `ds`, RK = name. One row per dynamic secret (its app, user, TTLs and
  the secret-store name of the app's client secret). The insert claims the name.
- `DynamicSecretUsers`  PK = tenant id, RK = user object id -> `{name, dsId, claimedAt}`.
  Claimed by insert: one dynamic secret per user, so one active lease per user.
- `Leases`  PK = dynamic secret name, RK = lease id (`{name}.{32 hex}`) for lease rows, and
  RK `active` for the claim row `{leaseId, claimedAt}` that a user's one live lease holds
  (inserted before the password is set, deleted when the lease is revoked or forgotten).
  Lease ids carry their partition, so `GET /leases/{id}` is a point read.
- `LeaseIndex`  PK = shard `s0`..`sf` (first hex digit of the lease's random part),
  RK = `{kind}_{time}_{leaseId}`, data `{leaseId, createdAt}`:
  - `due_{expiresAt or nextAttemptAt}_…`: when the sweeper must act (RowKey range `lt now`);
  - `intent_{createdAt}_…`: written before the Graph call, deleted once the lease is active;
    the reconciler reads only intents older than a few minutes;
  - `purge_{revokedAt}_…`: when a revoked lease may be deleted (retention).
  A sweep reads only the rows due, in 16 range queries; nothing scans all leases.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime
from typing import Any, Literal

from core import clock, tables
from core.tables import ConcurrencyConflict, Row, RowExists

DYNAMIC_SECRETS_TABLE = "DynamicSecrets"
DS_PARTITION = "ds"
DS_USERS_TABLE = "DynamicSecretUsers"
LEASES_TABLE = "Leases"
ACTIVE = "active"
LEASE_INDEX_TABLE = "LeaseIndex"
SHARDS = tuple(f"s{c}" for c in "0123456789abcdef")

IndexKind = Literal["due", "intent", "purge"]


# ---------------------------------------------------------------------------- keys


def new_lease_id(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex}"


def split_lease_id(lease_id: str) -> tuple[str, str] | None:
    """(dynamic secret name, shard) of a well-formed lease id, else None."""
    name, dot, tail = lease_id.rpartition(".")
    if not dot or not name or len(tail) != 32 or any(c not in "0123456789abcdef" for c in tail):
        return None
    return name, f"s{tail[0]}"


def shard_of(lease_id: str) -> str:
    parts = split_lease_id(lease_id)
    if parts is None:
        raise ValueError(f"malformed lease id {lease_id!r}")
    return parts[1]


def index_key(kind: IndexKind, at: str, lease_id: str) -> str:
    return f"{kind}_{at}_{lease_id}"


def index_range(kind: IndexKind, until: datetime) -> tuple[str, str]:
    """RowKey bounds (exclusive) of the entries of `kind` at or before `until`."""
    return f"{kind}_", f"{kind}_{clock.isoformat(until)}~"  # "~" sorts after "_": equal times included


def index_entry(lease_id: str, created_at: str) -> dict[str, Any]:
    return {"leaseId": lease_id, "createdAt": created_at}


# ---------------------------------------------------------------------------- dynamic secrets


async def get_dynamic_secret(name: str) -> Row | None:
    return await tables.get(DYNAMIC_SECRETS_TABLE, DS_PARTITION, name)


async def list_dynamic_secrets(limit: int) -> list[Row]:
    return await tables.partition(DYNAMIC_SECRETS_TABLE, DS_PARTITION, limit=limit)


async def insert_dynamic_secret(name: str, data: dict[str, Any]) -> Row:
    return await tables.insert(DYNAMIC_SECRETS_TABLE, DS_PARTITION, name, data)


async def replace_dynamic_secret(row: Row, data: dict[str, Any]) -> Row:
    return await tables.replace(row, data)


async def delete_dynamic_secret(name: str, etag: str | None) -> None:
    await tables.delete(DYNAMIC_SECRETS_TABLE, DS_PARTITION, name, etag)


async def claim_user(tenant_id: str, user_id: str, name: str, ds_id: str, stale_after: float) -> None:
    """Claim a user for one dynamic secret; `RowExists` naming the holder if taken.

    A claim left by a create that crashed before its dynamic secret row was written is taken
    over once older than `stale_after` seconds.
    """
    data = {"name": name, "dsId": ds_id, "claimedAt": clock.isoformat(clock.now())}
    try:
        await tables.insert(DS_USERS_TABLE, tenant_id.lower(), user_id, data)
        return
    except RowExists:
        held = await tables.get(DS_USERS_TABLE, tenant_id.lower(), user_id)
    if held is None:
        await tables.insert(DS_USERS_TABLE, tenant_id.lower(), user_id, data)
        return
    owner = await get_dynamic_secret(str(held.data.get("name")))
    alive = owner is not None and owner.data.get("id") == held.data.get("dsId")
    age = (clock.now() - datetime.fromisoformat(str(held.data.get("claimedAt")))).total_seconds()
    if alive or age < stale_after:
        raise RowExists(str(held.data.get("name")))
    await tables.replace(held, data)


async def release_user(tenant_id: str, user_id: str, ds_id: str) -> None:
    held = await tables.get(DS_USERS_TABLE, tenant_id.lower(), user_id)
    if held is not None and held.data.get("dsId") == ds_id:
        await tables.delete(DS_USERS_TABLE, held.pk, held.rk, held.etag)


# ---------------------------------------------------------------------------- leases


async def get_lease(lease_id: str) -> Row | None:
    parts = split_lease_id(lease_id)
    if parts is None:
        return None
    return await tables.get(LEASES_TABLE, parts[0], lease_id)


async def list_leases(name: str, ds_id: str, limit: int, status: str | None = None) -> list[Row]:
    """The leases of one dynamic secret (its partition, without the claim row), oldest id first."""
    flt = "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi and dynamicSecretId eq @ds"
    params: dict[str, Any] = {"pk": name, "lo": f"{name}.", "hi": f"{name}.~", "ds": ds_id}
    if status:
        flt += " and status eq @status"
        params["status"] = status
    return [row async for row in tables.query(LEASES_TABLE, flt, params, limit=limit)]


async def get_claim(name: str) -> Row | None:
    return await tables.get(LEASES_TABLE, name, ACTIVE)


async def insert_claim(name: str, lease_id: str) -> Row:
    """Claim the user's one live lease; `RowExists` if a lease holds it."""
    return await tables.insert(
        LEASES_TABLE, name, ACTIVE, {"leaseId": lease_id, "claimedAt": clock.isoformat(clock.now())}
    )


async def delete_claim(claim: Row | None, name: str | None = None) -> None:
    """Delete a claim row as read (ETag-checked), or unconditionally by name."""
    if claim is not None:
        with contextlib.suppress(ConcurrencyConflict):  # someone else's claim now: keep it
            await tables.delete(LEASES_TABLE, claim.pk, ACTIVE, claim.etag)
    elif name is not None:
        await tables.delete(LEASES_TABLE, name, ACTIVE)


async def take_over_claim(claim: Row, lease_id: str) -> Row:
    """Replace a stale claim (its lease was never recorded), ETag-checked."""
    return await tables.replace(claim, {"leaseId": lease_id, "claimedAt": clock.isoformat(clock.now())})


async def release_claim(name: str, lease_id: str) -> None:
    """Delete the claim if `lease_id` holds it (ETag-checked, so a newer claim is never removed)."""
    claim = await get_claim(name)
    if claim is not None and claim.data.get("leaseId") == lease_id:
        with contextlib.suppress(ConcurrencyConflict):  # a newer claim: keep it
            await tables.delete(LEASES_TABLE, name, ACTIVE, claim.etag)


async def write_intent(lease_id: str, created_at: str, due_key: str) -> str:
    """The intent and the due entry, in one transaction, before anything happens in Azure.

    The intent names the due entry, so the reconciler can remove both. Returns the intent key.
    """
    shard = shard_of(lease_id)
    entry = index_entry(lease_id, created_at)
    intent_key = index_key("intent", created_at, lease_id)
    await tables.batch(
        LEASE_INDEX_TABLE,
        [
            ("create", shard, intent_key, {**entry, "dueKey": due_key}, None),
            ("create", shard, due_key, entry, None),
        ],
    )
    return intent_key


async def delete_index(lease_id: str, *keys: str) -> None:
    """Delete index entries (idempotent)."""
    for key in keys:
        await tables.delete(LEASE_INDEX_TABLE, shard_of(lease_id), key)


async def insert_lease(lease_id: str, data: dict[str, Any]) -> Row:
    name, _ = split_lease_id(lease_id) or ("", "")
    return await tables.insert(LEASES_TABLE, name, lease_id, data)


async def replace_lease(row: Row, data: dict[str, Any]) -> Row:
    """ETag-checked write of a lease (`ConcurrencyConflict` if someone else changed it)."""
    return await tables.replace(row, data)


async def finish_lease(row: Row, data: dict[str, Any]) -> Row:
    """Write a terminal lease and release its claim in one transaction, then swap due -> purge.

    A non-terminal lease always holds its partition's claim, so the claim delete is safe;
    if the claim is gone (an operator fixed things by hand) the two writes are made apart.
    """
    lease_id = row.rk
    try:
        await tables.batch(
            LEASES_TABLE,
            [("update", row.pk, row.rk, data, row.etag), ("delete", row.pk, ACTIVE, {}, None)],
        )
        result = Row(row.table, row.pk, row.rk, data, None)  # terminal: never written again but by purge
    except ConcurrencyConflict:
        result = await tables.replace(row, data)  # raises if the lease itself changed
        await release_claim(row.pk, lease_id)
    await _swap_due_for_purge(lease_id, str(row.data.get("dueKey", "")), data)
    return result


async def _swap_due_for_purge(lease_id: str, due_key: str, data: dict[str, Any]) -> None:
    shard = shard_of(lease_id)
    purge_key = index_key("purge", str(data["revokedAt"]), lease_id)
    entry = index_entry(lease_id, str(data["createdAt"]))
    try:
        await tables.batch(
            LEASE_INDEX_TABLE,
            [("upsert", shard, purge_key, entry, None), ("delete", shard, due_key, {}, None)],
        )
    except ConcurrencyConflict:  # the due entry was already gone
        await tables.upsert(LEASE_INDEX_TABLE, shard, purge_key, entry)


async def move_due(lease_id: str, old_key: str, new_key: str, created_at: str) -> None:
    """Put the due entry at a new time: the new entry exists before the old one goes."""
    if old_key == new_key:
        return
    shard = shard_of(lease_id)
    entry = index_entry(lease_id, created_at)
    try:
        await tables.batch(
            LEASE_INDEX_TABLE,
            [("upsert", shard, new_key, entry, None), ("delete", shard, old_key, {}, None)],
        )
    except ConcurrencyConflict:
        await tables.upsert(LEASE_INDEX_TABLE, shard, new_key, entry)


async def add_due(lease_id: str, key: str, created_at: str) -> None:
    await tables.upsert(LEASE_INDEX_TABLE, shard_of(lease_id), key, index_entry(lease_id, created_at))


async def delete_lease_rows(row: Row, *, with_claim: bool) -> None:
    """Remove a lease that never became one (reconciler), ETag-checked, with its claim."""
    ops: list[tables.BatchOp] = [("delete", row.pk, row.rk, {}, row.etag)]
    if with_claim:
        claim = await get_claim(row.pk)
        if claim is not None and claim.data.get("leaseId") == row.rk:
            ops.append(("delete", row.pk, ACTIVE, {}, claim.etag))
    await tables.batch(LEASES_TABLE, ops)


async def delete_lease(row: Row) -> None:
    await tables.delete(LEASES_TABLE, row.pk, row.rk, row.etag)


async def index_entries(kind: IndexKind, until: datetime, limit: int | None = None) -> list[Row]:
    """Index entries of `kind` up to `until`, oldest first per shard, reading only those rows."""
    import asyncio

    low, high = index_range(kind, until)

    async def shard_rows(shard: str) -> list[Row]:
        flt = "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi"
        params = {"pk": shard, "lo": low, "hi": high}
        return [row async for row in tables.query(LEASE_INDEX_TABLE, flt, params, limit=limit)]

    per_shard = await asyncio.gather(*(shard_rows(s) for s in SHARDS))
    rows = [row for rows in per_shard for row in rows]
    rows.sort(key=lambda r: r.rk.split("_", 2)[1])
    return rows[:limit] if limit is not None else rows
