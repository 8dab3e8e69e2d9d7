"""The rotation reconciler: finish or undo rotations whose worker died mid-way.

A rotation in flight keeps its due index entry at or before the moment it was claimed, so
the rotations stuck for longer than `rotator.STUCK_AFTER` are among the entries due that long
ago: the reconciler reads only those. From `planned` or `added` it removes the new credential
(found by Key ID and by the run's display name) and starts afresh; from `verified` or
`stored` it finishes. Either way no broker-made password credential is left untracked.

It also removes broker-made Key IDs listed as pending removal (a secret a PATCH replaced whose
removePassword failed), reading only the cleanup partition of the index.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from core import clock

MAX_PER_RUN = 500


async def reconcile_rotations() -> dict[str, Any]:
    """Take over rotations stuck mid-way; a summary of outcomes."""
    from rotation import cleanup, runs, store
    from rotation.rotator import STUCK_AFTER

    now = clock.now()
    entries = await store.due(now - STUCK_AFTER, limit=MAX_PER_RUN)
    outcomes: Counter[str] = Counter()
    for entry in entries:
        outcomes[await runs.recover_stuck(entry.connection_id, now)] += 1
    cleanups = await store.cleanups(limit=MAX_PER_RUN)
    for item in cleanups:
        outcomes[await cleanup.clean_up(item.connection_id, item.since, now)] += 1
    outcomes.pop("ok", None)
    return {"checked": len(entries), "cleanups": len(cleanups), **dict(sorted(outcomes.items()))}
