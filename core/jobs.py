"""Running a timer job: the same wrapper for the Functions timers and the local runner.

A job is an async function returning a summary dict (counts). Failures are logged by type
and re-raised, so the Functions host records the execution as failed (alerts read that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("broker.jobs")

JobFn = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    """A timer job: its name, the setting that holds its NCRONTAB schedule, and its steps."""

    name: str
    schedule_setting: str
    steps: Sequence[JobFn]


async def run_job(job: Job) -> dict[str, Any]:
    """Run every step of a job, each isolated from the others' failures; return the summary."""
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    failed: list[str] = []
    for step in job.steps:
        name = getattr(step, "__qualname__", repr(step))
        try:
            summary[name] = await step()
        except Exception as error:
            failed.append(name)
            log.exception("job %s step %s failed: %s", job.name, name, type(error).__name__)
    elapsed = time.perf_counter() - started
    log.info("job %s finished in %.3fs: %s", job.name, elapsed, summary)
    if failed:
        raise RuntimeError(f"job {job.name}: steps failed: {', '.join(failed)}")
    return summary
