"""The stored lease entities as `core.records` models, their keys, and the writes that add meaning.

Tables and keys (property names are camelCase; times RFC 3339 UTC; TTLs whole seconds):

- `DynamicSecrets`  PK `ds`, RK = name. One row per dynamic secret (its app, user, TTLs and
  the secret-store name of the app's client secret). The insert claims the name.
- `DynamicSecretUsers`  PK = tenant id, RK = user object id -> `{name, dsId, claimedAt}`.
  Claimed by insert: one dynamic secret per user, so one active lease per user.
- `Leases`  PK = dynamic secret name, RK = lease id (`{name}.{32 hex}`) for lease rows, and
  RK `active` for the claim row `{leaseId, claimedAt}` that a user's one live lease holds
  (inserted before the password is set, deleted when the lease is revoked or forgotten).
  Lease ids carry their partition, so `GET /leases/{id}` is a point read.
- `LeaseIndex`  PK = shard `s0`..`sf` (first hex digit of the lease's random part),
  RK = `{kind}_{time}_{leaseId}`, data `{leaseId, createdAt}` (+ `dueKey` on intents):
  - `due_{expiresAt or nextAttemptAt}_…`: when the sweeper must act (RowKey range `lt now`);
  - `intent_{createdAt}_…`: written before the Graph call, deleted once the lease is active;
  - `purge_{revokedAt}_…`: when a revoked lease may be deleted (retention).
  A sweep reads only the rows due, in 16 range queries; nothing scans all leases.

Single point reads, inserts and ETag writes go straight to `core.records`; what is here writes
several rows that must stay consistent (intent + due entry, lease + claim, due -> purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator

from core import clock, records, tables
from core.durations import parse_duration
from core.records import Record
from core.tables import ConcurrencyConflict
from leases.models import LeaseStatus, ServedUser

SHARDS = tuple(f"s{c}" for c in "0123456789abcdef")
ACTIVE = "active"
DELETING = "(deleting)"  # claim marker of a dynamic secret being deleted
INTENT_PREFIX = "~intent_"  # secret intents in the `ds` partition sort after every name

IndexKind = Literal["due", "intent", "purge"]


def _seconds_or_legacy_text(value: object) -> object:
    """TTLs are stored as seconds; rows written before that hold the API's text (`1h`)."""
    return parse_duration(value) if isinstance(value, str) else value


StoredTtl = Annotated[timedelta, BeforeValidator(_seconds_or_legacy_text)]


class ServedCredential(ServedUser):
    """What a dynamic secret and each of its leases hold alike: the user, the app, and the
    secret-store name of the app's client secret that resets the user's password."""

    credential_ref: str

    def served(self) -> dict[str, str]:
        """These fields alone, to copy onto a record that serves the same user (a new lease)."""
        return self.model_dump(include=set(ServedCredential.model_fields))


class DynamicSecret(Record, ServedCredential, table="DynamicSecrets", pk="partition", rk="name"):
    partition: str = "ds"
    name: str
    id: str
    prefix: str
    default_ttl: StoredTtl
    max_ttl: StoredTtl
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None


class SecretIntent(Record, table="DynamicSecrets", pk="partition", rk="key"):
    """A copy of an app's client secret written to the secret store and not yet referenced.

    It lives in the `ds` partition next to the dynamic secret rows (RowKey `~intent_{time}_{ref}`
    sorts after every name), so a create commits the row and deletes the intent in one
    transaction and a PATCH commits the row and marks the intent `committed` in one: an intent
    still `pending` after RECONCILE_AFTER belongs to a writer that died, and the reconciler
    takes it (ETag) and deletes the copy; a `committed` one still has `replaces` to delete.
    """

    partition: str = "ds"
    key: str
    ref: str
    replaces: str | None = None
    state: Literal["pending", "taken", "committed"] = "pending"
    created_at: datetime

    @classmethod
    def new(cls, ref: str, replaces: str | None = None) -> SecretIntent:
        now = clock.now()
        return cls(
            key=f"{INTENT_PREFIX}{clock.isoformat(now)}_{ref}", ref=ref, replaces=replaces, created_at=now
        )


class UserClaim(Record, table="DynamicSecretUsers", pk="tenant_id", rk="user_id"):
    """`DynamicSecretUsers`: the user is served by the dynamic secret `name` (id `ds_id`)."""

    tenant_id: str
    user_id: str
    name: str
    ds_id: str
    claimed_at: datetime


class LeaseClaim(Record, table="Leases", pk="name", rk="slot"):
    """`Leases/{name}/active`: the one live lease of a dynamic secret, or a `(deleting)` marker."""

    name: str
    slot: str = ACTIVE
    lease_id: str
    claimed_at: datetime

    @property
    def deleting(self) -> bool:
        return self.lease_id.startswith(DELETING)


class Lease(Record, ServedCredential, table="Leases", pk="dynamic_secret_name", rk="id"):
    dynamic_secret_name: str
    id: str
    dynamic_secret_id: str
    status: LeaseStatus
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    due_key: str
    attempts: int = 0
    created_by: str | None = None
    renewed_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    claim_until: datetime | None = None
    claimed_by: str | None = None

    @property
    def app(self) -> tuple[str, str]:
        """(tenant, app): the unit Graph throttles and the gateway paces."""
        return self.tenant_id.lower(), self.application_id.lower()

    def event_ids(self) -> dict[str, str]:
        """The fields that name a lease in its events."""
        return {"leaseId": self.id, "dynamicSecretName": self.dynamic_secret_name}


class IndexEntry(Record, table="LeaseIndex", pk="shard", rk="key"):
    """`LeaseIndex`: one time-ordered pointer at a lease (`due`, `intent` or `purge`)."""

    shard: str
    key: str
    lease_id: str
    created_at: datetime
    due_key: str | None = None  # intents name their due entry, so the reconciler removes both

    @classmethod
    def of(cls, kind: IndexKind, at: datetime, lease: Lease, **extra: str) -> IndexEntry:
        key = index_key(kind, at, lease.id)
        return cls(shard=shard_of(lease.id), key=key, lease_id=lease.id, created_at=lease.created_at, **extra)


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


def index_key(kind: IndexKind, at: datetime, lease_id: str) -> str:
    return f"{kind}_{clock.isoformat(at)}_{lease_id}"


def index_range(kind: IndexKind, until: datetime) -> tuple[str, str]:
    """RowKey bounds (exclusive) of the entries of `kind` at or before `until`."""
    return f"{kind}_", f"{kind}_{clock.isoformat(until)}~"  # "~" sorts after "_": equal times included


# ---------------------------------------------------------------------------- reads


async def get_lease(lease_id: str) -> Lease | None:
    parts = split_lease_id(lease_id)
    return None if parts is None else await records.get(Lease, parts[0], lease_id)


async def get_claim(name: str) -> LeaseClaim | None:
    return await records.get(LeaseClaim, name, ACTIVE)


async def list_dynamic_secrets(limit: int) -> list[DynamicSecret]:
    """Dynamic secrets by name (the partition's secret intents sort after them and are left out)."""
    flt = "PartitionKey eq 'ds' and RowKey lt @intents"
    query = tables.query(DynamicSecret.TABLE, flt, {"intents": INTENT_PREFIX}, limit=limit)
    return [DynamicSecret.from_row(row) async for row in query]


async def secret_intents(until: datetime, limit: int) -> list[SecretIntent]:
    """Secret intents written at or before `until`, oldest first."""
    flt = "PartitionKey eq 'ds' and RowKey gt @lo and RowKey lt @hi"
    params = {"lo": INTENT_PREFIX, "hi": f"{INTENT_PREFIX}{clock.isoformat(until)}~"}
    query = tables.query(SecretIntent.TABLE, flt, params, limit=limit)
    return [SecretIntent.from_row(row) async for row in query]


async def list_leases(name: str, ds_id: str, limit: int, status: LeaseStatus | None) -> list[Lease]:
    """The leases of one dynamic secret (its partition, without the claim row), oldest id first."""
    flt = "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi and dynamicSecretId eq @ds"
    params: dict[str, str] = {"pk": name, "lo": f"{name}.", "hi": f"{name}.~", "ds": ds_id}
    if status:
        flt += " and status eq @status"
        params["status"] = status.value
    return [Lease.from_row(row) async for row in tables.query(Lease.TABLE, flt, params, limit=limit)]


async def index_entries(kind: IndexKind, until: datetime, limit: int | None = None) -> list[IndexEntry]:
    """Index entries of `kind` up to `until`, oldest first, reading only those rows (16 ranges)."""
    low, high = index_range(kind, until)

    async def shard_rows(shard: str) -> list[IndexEntry]:
        flt = "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi"
        params = {"pk": shard, "lo": low, "hi": high}
        query = tables.query(IndexEntry.TABLE, flt, params, limit=limit)
        return [IndexEntry.from_row(row) async for row in query]

    per_shard = await asyncio.gather(*(shard_rows(s) for s in SHARDS))
    entries = sorted((e for es in per_shard for e in es), key=lambda e: e.key.split("_", 2)[1])
    return entries[:limit] if limit is not None else entries


# ---------------------------------------------------------------------------- writes of rows kept in step


async def release_claim(name: str, lease_id: str) -> None:
    """Delete the claim if `lease_id` holds it (ETag-checked, so a newer claim is never removed)."""
    claim = await get_claim(name)
    if claim is not None and claim.lease_id == lease_id:
        with contextlib.suppress(ConcurrencyConflict):  # a newer claim: keep it
            await records.delete(claim)


async def write_intent(lease: Lease) -> IndexEntry:
    """The intent and the lease's due entry, in one transaction, before anything happens in Azure."""
    due = IndexEntry(
        shard=shard_of(lease.id), key=lease.due_key, lease_id=lease.id, created_at=lease.created_at
    )
    intent = IndexEntry.of("intent", lease.created_at, lease, due_key=lease.due_key)
    await records.batch([("create", intent), ("create", due)])
    return intent


async def delete_index(lease_id: str, *keys: str) -> None:
    """Delete index entries (idempotent)."""
    for key in keys:
        await tables.delete(IndexEntry.TABLE, shard_of(lease_id), key)


async def move_due(before: Lease, after: Lease) -> None:
    """Put the due entry where `after` points: the new entry exists before the old one goes."""
    if before.due_key == after.due_key:
        return
    new = IndexEntry(
        shard=shard_of(after.id), key=after.due_key, lease_id=after.id, created_at=after.created_at
    )
    old = new.model_copy(update={"key": before.due_key})
    try:
        await records.batch([("upsert", new), ("delete", old)])
    except ConcurrencyConflict:  # the old entry was already gone
        await records.upsert(new)


async def finish_lease(before: Lease, after: Lease) -> Lease:
    """Write a terminal lease and release its claim in one transaction, then swap due -> purge.

    A non-terminal lease always holds its partition's claim, so the claim delete is safe;
    if the claim is gone (an operator fixed things by hand) the two writes are made apart.
    """
    claim = LeaseClaim(name=after.dynamic_secret_name, lease_id=after.id, claimed_at=after.created_at)
    try:
        await records.batch([("update", after), ("delete", claim)])
        result = after.model_copy(update={"etag": None})  # terminal: only purge writes it again
    except ConcurrencyConflict:
        result = await records.replace(after)  # raises if the lease itself changed
        await release_claim(after.dynamic_secret_name, after.id)
    assert after.revoked_at is not None
    purge = IndexEntry.of("purge", after.revoked_at, after)
    await records.upsert(purge)
    # Two single writes, not a transaction (a batch costs the broker ~3x a single write): the
    # purge entry exists first, and a due entry left by a crash here is deleted by the next
    # sweep as stale (it points at a terminal lease).
    await records.delete(purge.model_copy(update={"key": before.due_key}), conditional=False)
    return result


async def delete_unborn(lease: Lease, intent: IndexEntry | None = None) -> None:
    """Remove a lease that never became one (ETag-checked), its claim, due entry and intent."""
    ops: list[tuple[records.BatchKind, Record]] = [("delete", lease)]
    claim = await get_claim(lease.dynamic_secret_name)
    if claim is not None and claim.lease_id == lease.id:
        ops.append(("delete", claim))
    await records.batch(ops)
    await delete_index(lease.id, lease.due_key, *([intent.key] if intent else []))
