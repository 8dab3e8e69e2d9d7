"""The lease reconciler and the retention purge (both on `reconcile_timer`).

`reconcile_leases` resolves intents older than `service.RECONCILE_AFTER`, i.e. creates that
died part-way (they take seconds), through `revoking.resolve_intent`:
- no lease row: the create died before writing it, so nothing was set in Azure; the claim
  (if it names this lease) and the index entries are removed;
- a `pending` lease: the password may have been set and nobody holds it. The reconciler
  claims the lease (ETag: a create finishing late then fails instead of handing out a
  password), sets an unknown random password and records the lease as revoked;
- any other state: the create finished but for deleting its intent, which goes now.
It also resolves the secret intents of dynamic secret writers that died (`secret_copies.resolve`):
no copy of an app's client secret stays in the secret store unreferenced.

`purge_old_leases` deletes revoked / forgotten leases older than LEASE_RETENTION_DAYS, read
from their `purge_` index entries (no scan of the lease table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from core.settings import get_settings
from leases import revoking, secret_copies
from leases.records import IndexEntry, SecretIntent

log = logging.getLogger(__name__)

E = TypeVar("E", IndexEntry, SecretIntent)
MAX_PER_RUN = 500
CONCURRENCY = 8


async def reconcile_leases() -> dict[str, Any]:
    counts = await _each(await revoking.stale_intents(MAX_PER_RUN), revoking.resolve_intent)
    copies = await _each(await secret_copies.stale_intents(MAX_PER_RUN), secret_copies.resolve)
    copies["secret_intents"] = copies.pop("seen")
    return {**counts, **copies}


async def purge_old_leases() -> dict[str, Any]:
    retention = timedelta(days=get_settings().lease_retention_days)
    return await _each(await revoking.purge_entries(retention, MAX_PER_RUN), revoking.purge)


async def _each(entries: list[E], action: Callable[[E], Awaitable[str]]) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(CONCURRENCY)
    counts: dict[str, int] = {"seen": len(entries)}

    async def one(entry: E) -> None:
        async with semaphore:
            try:
                outcome = await action(entry)
            except Exception as error:
                outcome = "errors"
                log.warning("lease job on %s failed: %s", entry.rk, type(error).__name__)
            counts[outcome] = counts.get(outcome, 0) + 1

    await asyncio.gather(*(one(entry) for entry in entries))
    return counts
