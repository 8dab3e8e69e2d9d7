"""The randomized concurrency harness (tests/chaos.py) over a fixed set of seeds; `make soak` runs more.

`make soak SEEDS=N` runs N further seeds (from SEED_START, default 1000); `make soak SEED=S` replays
one. A failing seed prints its schedule, the violations and the one-line command that replays it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos import Schedule, run_schedule
from tests.harness import ServerHandle

FIXED_SEEDS = (1, 2, 3, 4)


def _seeds() -> list[int]:
    if os.environ.get("HARNESS_SEED"):
        return [int(os.environ["HARNESS_SEED"])]
    if os.environ.get("HARNESS_SEEDS"):
        start = int(os.environ.get("HARNESS_SEED_START") or 1000)
        return list(range(start, start + int(os.environ["HARNESS_SEEDS"])))
    return list(FIXED_SEEDS)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("seed", _seeds())
def test_schedule_keeps_invariants(
    seed: int, fake_azure: Any, broker: ServerHandle, token: Callable[..., str]
) -> None:
    schedule = Schedule.generate(seed)
    outcome = asyncio.run(run_schedule(fake_azure, broker, token(), schedule))
    statuses = sorted({status for _, status in outcome.statuses})
    print(
        f"seed {seed}: {len(outcome.statuses)} requests, statuses {statuses}, refusals checked "
        f"{outcome.refusals_checked}, skipped (overlapped) {outcome.refusals_skipped}, "
        + ", ".join(f"{name} {at:.1f}s" for name, at in outcome.phases.items())
    )
    assert not outcome.violations, (
        "\n".join(outcome.violations)
        + "\n\nrequests:\n"
        + "\n".join(outcome.trace)
        + f"\n\n{schedule.describe()}\n\nreplay: make soak SEED={seed}"
    )
