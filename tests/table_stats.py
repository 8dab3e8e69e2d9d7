"""Table operation counters for benchmarks and tests, installed as a core.tables observer.

Importing this module installs the counter (conftest and `make bench` import it), so the
product code carries no counters of its own. `stats` is also set as `core.tables.stats` for
code written before the counters moved here; new code imports `stats` from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core import tables


@dataclass
class TableStats:
    """Operation counters (cost per rotation, entities read per sweep)."""

    operations: int = 0
    entities_read: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str | None, read: int = 0) -> None:
        self.entities_read += read
        if kind is not None:
            self.operations += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def reset(self) -> None:
        self.operations = self.entities_read = 0
        self.by_kind = {}


stats = TableStats()
tables.observe(stats.count)
tables.stats = stats  # type: ignore[attr-defined]  # the old spelling, for benches not yet moved
