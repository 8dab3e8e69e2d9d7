"""`make bench`: run every benchmark and print its tables."""

from __future__ import annotations

import importlib
import sys

import tests.table_stats  # noqa: F401  (installs the table operation counters the benches print)
from bench.table import render

MODULES = ["bench.cold_start", "bench.rotation", "bench.secret_rotation", "bench.leases", "bench.inventory"]


def main() -> None:
    chosen = sys.argv[1:] or MODULES
    for name in chosen:
        module = importlib.import_module(name if name.startswith("bench.") else f"bench.{name}")
        for title, headers, rows in module.run():
            print(render(title, headers, rows), flush=True)


if __name__ == "__main__":
    main()
