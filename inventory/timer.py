"""The inventory timer step: scan every Azure Client Secrets connection's tenant.

Connections are listed through core.connection_seam (inventory never imports connections/), who
manages each Key ID through core.managed_keys (rotation registers its providers). Each scan runs
under its own claim (inventory.scan), a few at once; one connection failing or refused is
recorded and the others go on. Rows of connections that no longer exist are removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from core import connection_seam, managed_keys, tables
from inventory import scan
from inventory.models import SCAN_PK, ScanRecord

log = logging.getLogger(__name__)

CONCURRENCY = 4
# A run stops starting scans after this long (the rest wait for the next run), so it ends well
# inside the Functions timeout even when every tenant is large or slow.
RUN_BUDGET_SECONDS = 240.0


async def scan_inventory() -> dict[str, Any]:
    """Scan each connection that is not claimed or freshly scanned; a count of the outcomes."""
    connections = await connection_seam.access().list_facts(scan.KIND)
    managed = await managed_keys.managed_by()
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    started = time.monotonic()

    async def one(facts: connection_seam.ConnectionFacts) -> None:
        async with gate:
            if time.monotonic() - started > RUN_BUDGET_SECONDS:
                outcomes["deferred"] += 1
                return
            claimed = await scan.claim(facts.id, facts.tenant_id)
            if claimed is None:
                outcomes["skipped"] += 1
                return
            try:
                outcomes[await scan.scan_connection(facts, claimed, managed)] += 1
            except (
                Exception
            ) as error:  # e.g. Table Storage unavailable: the claim lapses, the next run retakes it
                log.error("inventory scan of %s failed: %s", facts.id, type(error).__name__)
                outcomes["error"] += 1

    await asyncio.gather(*(one(facts) for facts in connections))
    known = {facts.id for facts in connections}
    for row in await tables.partition(ScanRecord.TABLE, SCAN_PK):
        if row.rk not in known:
            outcomes[await scan.forget(row.rk)] += 1
    return {"connections": len(connections), **dict(sorted(outcomes.items()))}
