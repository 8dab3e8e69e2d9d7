"""The randomized concurrency harness (tests/chaos.py) over a fixed set of seeds; `make soak` runs more.

`make soak SEEDS=N` runs N further seeds (from SEED_START, default 1000); `make soak SEED=S` replays
one. A failing seed prints its schedule, the violations and the one-line command that replays it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.chaos import PAST_EVERY_CLAIM, Schedule, World, run_schedule
from tests.harness import ServerHandle
from tests.rotation_helpers import BROKER_MARK, PREFIX

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
    for violation in outcome.violations:  # live with `make soak PYTEST_ARGS=-s`, before the summary
        print(f"seed {seed} violation: {violation[:400]}")
    assert not outcome.violations, (
        "\n".join(outcome.violations)
        + "\n\nrequests:\n"
        + "\n".join(outcome.trace)
        + f"\n\n{schedule.describe()}\n\nreplay: make soak SEED={seed}"
    )


def test_invariants_catch_planted_defects(
    fake_azure: Any, broker: ServerHandle, token: Callable[..., str]
) -> None:
    """The checks can fail: an orphan broker secret, a lost stored secret and a changed lease password
    planted after quiescence are each reported (I2, I1, I3)."""

    async def planted() -> list[str]:
        schedule = Schedule(0, [], connections=1, users=1, lease_ttl="1h", final_advance=PAST_EVERY_CLAIM)
        async with httpx.AsyncClient(
            base_url=broker.url, headers={"Authorization": f"Bearer {token()}"}, timeout=90
        ) as client:
            world = World(fake_azure, broker, client, schedule)
            await world.setup()
            await world.quiesce()
            assert not world.outcome.violations
            app = world.apps[0].app
            fake_azure.add_password(app, display_name=f"{BROKER_MARK} planted orphan")
            view = (await client.get(f"{PREFIX}/{world.conns[0]}")).json()
            assert fake_azure.remove_password(app, view["rotation"]["clientSecretKeyId"])
            fake_azure.set_user_password(world.entra.users[0], "Changed-by-someone-1a!")
            await world.check()
            await world.cleanup()
            return world.outcome.violations

    violations = asyncio.run(planted())
    assert any(v.startswith("I1:") for v in violations), violations
    assert any(v.startswith("I2:") and "planted orphan" in v for v in violations), violations
    assert any(v.startswith("I3:") and "does not sign in" in v for v in violations), violations
