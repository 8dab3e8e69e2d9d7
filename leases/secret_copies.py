"""Copies of an app's client secret in the secret store: none is left behind by a writer that died.

Every copy is announced by a `SecretIntent` before it is written, and the dynamic secret row
that references it is committed in the same transaction that retires the intent
(`records.SecretIntent` says how). The reconciler resolves intents older than RECONCILE_AFTER:
a `pending` one is taken by ETag (so the writer, if it was only slow, fails to commit and
undoes its own work) and its copy deleted; a `committed` one gets its `replaces` deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from core import clock, records
from core.errors import Unavailable
from core.tables import ConcurrencyConflict
from leases import provider
from leases import records as lease_rows
from leases.records import DynamicSecret, SecretIntent
from leases.service import RECONCILE_AFTER

WRITES_AT_ONCE = 8  # a 100-user create must not open 100 connections at once


def _store() -> Any:
    from core.secret_store import secret_store

    return secret_store()


async def announce(refs: Sequence[str], replaces: str | None = None) -> list[SecretIntent]:
    """Record the intents before any copy is written (with their ETags, for the commit)."""
    gate = asyncio.Semaphore(WRITES_AT_ONCE)

    async def insert(ref: str) -> SecretIntent:
        async with gate:
            return await records.insert(SecretIntent.new(ref, replaces))

    return list(await asyncio.gather(*(insert(ref) for ref in refs)))


async def write(intents: Sequence[SecretIntent], secret: str) -> None:
    await asyncio.gather(*(_store().set(intent.ref, secret) for intent in intents))


def _lost() -> Unavailable:
    return Unavailable(
        "the dynamic secret took too long to record and its secret copy was cleaned up; try again",
        headers={"Retry-After": "5"},
    )


async def commit_insert(ds: DynamicSecret, intent: SecretIntent) -> DynamicSecret:
    """Insert the row and retire its intent atomically. `ConcurrencyConflict` if the name is taken;
    a 503 if the reconciler took the intent (this writer was too slow; the copy is gone)."""
    try:
        await records.batch([("create", ds), ("delete", intent)])
    except ConcurrencyConflict:
        if await records.get(DynamicSecret, "ds", ds.name) is not None:
            raise
        raise _lost() from None
    return ds


async def commit_replace(ds: DynamicSecret, intent: SecretIntent) -> SecretIntent:
    """Switch the row to the new copy (ETag) and mark the intent committed, atomically; `retire`
    it next. `ConcurrencyConflict` if the row changed meanwhile."""
    committed = intent.model_copy(update={"state": "committed"})
    try:
        await records.batch([("update", ds), ("update", committed)])
    except ConcurrencyConflict:
        current = await records.get(SecretIntent, "ds", intent.key)
        if current is None or current.state != "pending":
            raise _lost() from None
        raise
    return committed


async def discard(intents: Sequence[SecretIntent]) -> None:
    """Undo: delete the copies, then their intents (idempotent)."""
    for intent in intents:
        await _store().delete(intent.ref)
        await records.delete(intent, conditional=False)


async def retire(intent: SecretIntent) -> None:
    """A committed intent: the copy it replaced goes, then the intent."""
    if intent.replaces:
        await _store().delete(intent.replaces)
        provider.forget_secret(intent.replaces)
    await records.delete(intent, conditional=False)


async def resolve(intent: SecretIntent) -> str:
    """One stale intent (see the module docstring); returns what was done."""
    if intent.state == "committed":
        await retire(intent)
        return "secrets_retired"
    if intent.state == "pending":
        try:
            intent = await records.replace(intent.model_copy(update={"state": "taken"}))
        except ConcurrencyConflict:
            return "raced"  # its writer committed or undid it meanwhile
    await discard([intent])
    return "secrets_removed"


async def stale_intents(limit: int) -> list[SecretIntent]:
    return await lease_rows.secret_intents(clock.now() - RECONCILE_AFTER, limit)
