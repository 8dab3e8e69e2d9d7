"""Timer wiring: every step of every job resolves, a failed step fails the job, past_due is an event."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from core.jobs import Job, JobFailed, resolve, run_job
from tests.harness import ServerHandle

SECRET = "s3cr3t-text-of-a-failing-step"


def test_every_step_of_every_job_resolves_to_an_async_function(broker_env: dict[str, str]) -> None:
    import function_app

    steps = [step for job in function_app.JOBS for step in job.steps]
    assert len(steps) >= 5
    for step in steps:
        function = resolve(step)
        assert inspect.iscoroutinefunction(function), step
        required = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert not required, f"{step} needs arguments the timer does not pass: {required}"


def test_every_timer_has_a_job_with_steps(broker_env: dict[str, str]) -> None:
    import function_app

    assert {job.name for job in function_app.JOBS} == {"rotation", "lease_expiry", "reconcile", "inventory"}
    assert all(job.steps for job in function_app.JOBS)


def test_a_step_that_is_not_module_colon_function_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="module:function"):
        Job("x", "ROTATION_SCHEDULE", ["leases.sweeper.sweep_expired_leases"])


def test_a_step_that_is_not_async_is_refused() -> None:
    with pytest.raises(TypeError, match="not an async function"):
        resolve("core.clock:now")


@pytest.fixture
def fake_steps() -> Iterator[types.ModuleType]:
    """A module of job steps: one that works, one whose error text is a secret."""
    module = types.ModuleType("fake_job_steps")

    async def works() -> dict[str, Any]:
        return {"done": 1}

    async def breaks() -> dict[str, Any]:
        raise RuntimeError(SECRET)

    module.works = works  # type: ignore[attr-defined]
    module.breaks = breaks  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_a_failed_step_fails_the_job_and_never_logs_finished(
    fake_steps: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    job = Job("demo", "ROTATION_SCHEDULE", ["fake_job_steps:breaks", "fake_job_steps:works"])
    caplog.set_level(logging.INFO)
    with pytest.raises(JobFailed):
        asyncio.run(run_job(job))
    text = "\n".join(caplog.text.splitlines())
    assert "job demo failed" in text
    assert "step fake_job_steps:breaks failed: RuntimeError" in text
    assert "job demo finished" not in text
    assert "in breaks" in text  # where it failed is logged ...
    assert SECRET not in text  # ... but never the exception's text
    assert all(r.exc_info is None for r in caplog.records)  # no traceback with the message either


def test_a_job_whose_steps_work_logs_finished(
    fake_steps: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    summary = asyncio.run(run_job(Job("demo", "ROTATION_SCHEDULE", ["fake_job_steps:works"])))
    assert summary == {"fake_job_steps:works": {"done": 1}}
    assert "job demo finished" in caplog.text
    assert "failed" not in caplog.text


def test_a_past_due_timer_is_logged_as_an_event(
    broker: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the function the host indexes, with the TimerRequest it passes."""
    from azure.functions.timer import TimerRequest

    import function_app

    timer = next(f for f in function_app.app.get_functions() if f.get_function_name() == "lease_expiry_timer")
    caplog.set_level(logging.INFO)
    broker.run(timer.get_user_function()(TimerRequest(past_due=True)))
    events = [
        json.loads(r.getMessage().removeprefix("BROKER_EVENT "))
        for r in caplog.records
        if r.getMessage().startswith("BROKER_EVENT ")
    ]
    assert {"event": "timer.past_due", "job": "lease_expiry"} in events
    late = next(r for r in caplog.records if "timer.past_due" in r.getMessage())
    assert late.levelno == logging.WARNING
    caplog.clear()
    broker.run(timer.get_user_function()(TimerRequest(past_due=False)))
    assert "timer.past_due" not in caplog.text
    assert "job lease_expiry finished" in caplog.text
