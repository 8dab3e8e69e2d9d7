"""The connections' reconcile step: finish the DELETEs that stopped half-way.

A DELETE marks the row `deleting` under its ETag before any side effect. If it then fails (an
Azure fault while rotation removes the broker's secrets, a worker that died), the row stays
`deleting` and refuses every writer until the DELETE is sent again. The reconciler sends it once
the first one has surely ended: its claim (`DELETE_CLAIM`, which also bounds its Azure calls) plus
the longest single call.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from core import audit, azure_gateway, clock, events
from core.errors import NotFound, Problem


async def finish_deletes() -> dict[str, Any]:
    """Finish every DELETE whose claim has run out; a summary of outcomes."""
    from connections import client_secrets, devops, lifecycle, store

    now = clock.now()
    outcomes: Counter[str] = Counter()
    for spec in (client_secrets.SPEC, devops.SPEC):
        for record in await store.deleting(spec.kind):
            claimed = datetime.fromisoformat(record.updated_at)
            if azure_gateway.takeover_at(claimed + lifecycle.DELETE_CLAIM) > now:
                outcomes["busy"] += 1
                continue
            try:
                await lifecycle.delete(spec, record.id, audit.SYSTEM, if_match=record.etag)
            except NotFound:
                outcomes["gone"] += 1  # another DELETE finished it meanwhile
                continue
            except Problem:
                # A 412 (someone else took it over) or Azure still failing: the next run tries again.
                outcomes["failed"] += 1
                continue
            outcomes["finished"] += 1
            events.emit("reconcile.fixed", kind="connection-delete", connectionId=record.id)
    return dict(sorted(outcomes.items()))
