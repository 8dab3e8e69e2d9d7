"""Running a timer job: the same wrapper for the Functions timers and the local runner.

A job's steps are async functions returning a summary dict (counts), named `module:function`
and imported on first run, so a worker that only serves HTTP (or only one timer) never
imports the others; `tests/test_jobs.py` resolves every step of every job, so a renamed
function fails the suite, not the timer in Azure. A step's failure is logged by type and
stack (never the exception's text, which could hold a secret); the job then logs `failed`
and raises, so the Functions host records the execution as failed (alerts read that).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core import events, telemetry

log = logging.getLogger("broker.jobs")

JobFn = Callable[[], Awaitable[dict[str, Any]]]


class JobFailed(RuntimeError):
    """At least one step of a job failed (each was logged when it did)."""


@dataclass(frozen=True)
class Job:
    """A timer job: its name, the setting that holds its NCRONTAB schedule, and its steps."""

    name: str
    schedule_setting: str
    steps: Sequence[str]

    def __post_init__(self) -> None:
        for step in self.steps:
            module, colon, function = step.partition(":")
            if not (module and colon and function.isidentifier()):
                raise ValueError(f"job {self.name}: step {step!r} is not 'package.module:function'")


def resolve(step: str) -> JobFn:
    """`package.module:function` -> the async function (imported now)."""
    module, _, function = step.partition(":")
    found = getattr(importlib.import_module(module), function)
    if not inspect.iscoroutinefunction(found):
        raise TypeError(f"job step {step} is not an async function")
    resolved: JobFn = found
    return resolved


def _stack(error: BaseException) -> str:
    """Where it failed (file, line, function) without the message, which may carry anything."""
    return "".join(traceback.format_tb(error.__traceback__)).rstrip()


async def run_job(job: Job, *, past_due: bool = False) -> dict[str, Any]:
    """Run every step of a job, each isolated from the others' failures; return the summary.

    `past_due` (the host's TimerRequest.past_due) is logged as a `timer.past_due` event: the
    run is late (the worker was down or the previous run overran), which alerts can count.
    """
    telemetry.start()  # dependency tracing, configured in the background on first use
    if past_due:
        events.emit("timer.past_due", level=logging.WARNING, job=job.name)
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    failed: list[str] = []
    for name in job.steps:
        try:
            summary[name] = await resolve(name)()
        except Exception as error:
            failed.append(name)
            log.error("job %s step %s failed: %s\n%s", job.name, name, type(error).__name__, _stack(error))
    elapsed = time.perf_counter() - started
    await events.drain(within=5.0)  # the job's events reach Event Grid before the worker may freeze
    if failed:
        log.error("job %s failed in %.3fs: steps failed: %s; %s", job.name, elapsed, failed, summary)
        raise JobFailed(f"job {job.name}: steps failed: {', '.join(failed)}")
    log.info("job %s finished in %.3fs: %s", job.name, elapsed, summary)
    return summary
