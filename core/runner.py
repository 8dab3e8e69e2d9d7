"""The local stand-in for the Functions timer host: fire each job on its NCRONTAB schedule.

`make run` uses it so that the same job functions run on the same schedules as in Azure.
One run of a job at a time (like the host's singleton lock with use_monitor).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from core.jobs import Job, run_job
from core.ncrontab import parse_ncrontab
from core.settings import get_settings

log = logging.getLogger("broker.runner")


def schedule_of(job: Job) -> str:
    """The job's NCRONTAB expression, read from its app setting as `%SETTING%` does."""
    value = getattr(get_settings(), job.schedule_setting.lower())
    assert isinstance(value, str)
    return value


async def _loop(job: Job) -> None:
    schedule = parse_ncrontab(schedule_of(job))
    while True:
        now = datetime.now(UTC)
        due = schedule.next_after(now)
        await asyncio.sleep((due - now).total_seconds())
        try:
            await run_job(job)
        except Exception as error:  # run_job logged each failed step; keep the schedule going
            log.warning("timer %s failed: %s", job.name, type(error).__name__)


async def run_timers(jobs: Sequence[Job]) -> None:
    """Run every job on its schedule until cancelled."""
    for job in jobs:
        log.info("timer %s on schedule %r", job.name, schedule_of(job))
    await asyncio.gather(*(_loop(job) for job in jobs))
