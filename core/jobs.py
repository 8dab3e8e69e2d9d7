"""Running a timer job: the same wrapper for the Functions timers and the local runner.

A job's steps are async functions returning a summary dict (counts), named `module:function`
and imported on first run, so a worker that only serves HTTP (or only one timer) never
imports the others. Failures are logged by type and re-raised, so the Functions host records
the execution as failed (alerts read that).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core import events, telemetry

log = logging.getLogger("broker.jobs")

JobFn = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    """A timer job: its name, the setting that holds its NCRONTAB schedule, and its steps."""

    name: str
    schedule_setting: str
    steps: Sequence[str]


def resolve(step: str) -> JobFn:
    """`package.module:function` -> the function (imported now)."""
    module, _, function = step.partition(":")
    found: JobFn = getattr(importlib.import_module(module), function)
    return found


async def run_job(job: Job) -> dict[str, Any]:
    """Run every step of a job, each isolated from the others' failures; return the summary."""
    telemetry.start()  # dependency tracing, configured in the background on first use
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    failed: list[str] = []
    for name in job.steps:
        try:
            summary[name] = await resolve(name)()
        except Exception as error:
            failed.append(name)
            log.exception("job %s step %s failed: %s", job.name, name, type(error).__name__)
    elapsed = time.perf_counter() - started
    await events.drain(within=5.0)  # the job's events reach Event Grid before the worker may freeze
    log.info("job %s finished in %.3fs: %s", job.name, elapsed, summary)
    if failed:
        raise RuntimeError(f"job {job.name}: steps failed: {', '.join(failed)}")
    return summary
