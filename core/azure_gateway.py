"""The one way to talk to Azure: every call to Entra ID, Graph, Key Vault and DevOps goes through `call`.

    async with azure_gateway.deadline(claim_until):          # nothing below outlives the claim
        user = await azure_gateway.call(
            "readUser", lambda: graph.users.by_user_id(uid).get(), pace=(tenant, app_id)
        )

What `call` does, in one place:

- **Classification**: whatever the SDK raised becomes an `AzureFailure` (`core.azure_failure`):
  the step, the HTTP status, Azure's code, Retry-After, the field at fault.
- **Retry**: up to `MAX_ATTEMPTS` tries. A 429 is always retried (Azure did not process it), after
  its Retry-After. 5xx, timeouts and resets are retried only when `idempotent=True`: a request that
  is not idempotent (`addPassword`) is never repeated blindly; its lost answer is resolved by
  `core.azure_passwords.add_password` reading the app's credentials. SDK retries are off (Graph
  clients are built with kiota's retry handler at 0 retries), so this is the only retry policy.
- **Deadline**: every attempt, retry wait and pacing wait ends by the innermost `deadline(...)`
  (a context variable, so it follows the task into every call it makes), else by
  `DEFAULT_BUDGET_SECONDS` from the call's start. A wait that would end past the deadline is not
  begun: the last failure is raised at once. An attempt cut by the deadline is `deadline` (HTTP 504).
- **The claim rule**: a single attempt lasts at most `MAX_CALL_SECONDS`, so work done under a claim
  that ends at T has left the broker by T; Azure may still apply a request sent just before T, until
  T + `MAX_CALL_SECONDS`. Whoever takes a claim over waits until `takeover_at(claim_until)`.
- **Pacing** per (tenant, app) (`core.pacing`): a 429 for one key delays only that key's calls
  until its Retry-After has passed, and teaches the key a pace its calls then keep to (Graph
  throttles per app and tenant), so a throttled tenant never slows another, and a busy one is
  not driven into 429 after 429. Keys are process-wide, shared by every loop and task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TypeVar

from core import clock, pacing
from core.azure_failure import DEADLINE, TIMEOUT, AzureFailure, Kind, classify
from core.pacing import PaceKey

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 4
# The longest one attempt may take (the HTTP clients' own timeout is the same or shorter).
MAX_CALL_SECONDS = 20.0
# A call outside any `deadline(...)` (an API request) gives up after this, retries included.
DEFAULT_BUDGET_SECONDS = 30.0
BACKOFF_BASE_SECONDS = 0.5

_deadline: ContextVar[float | None] = ContextVar("azure_deadline", default=None)


# ---------------------------------------------------------------------------- deadlines


def _monotonic_at(until: datetime | float) -> float:
    if isinstance(until, datetime):
        return time.monotonic() + (until - clock.now()).total_seconds()
    return time.monotonic() + until


@contextlib.asynccontextmanager
async def deadline(until: datetime | float | None) -> AsyncIterator[None]:
    """Run the block's Azure calls so none outlives `until` (a time, or seconds from now).

    Nested deadlines keep the earliest; `None` leaves the current one as it is.
    """
    current = _deadline.get()
    wanted = current if until is None else _monotonic_at(until)
    token = _deadline.set(wanted if current is None or wanted is None else min(current, wanted))
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left() -> float | None:
    """Seconds until the current deadline (negative: passed), or None outside any."""
    current = _deadline.get()
    return None if current is None else current - time.monotonic()


def takeover_at(claim_until: datetime) -> datetime:
    """When a claim ending at `claim_until` may be taken over: its last call has surely landed."""
    return claim_until + timedelta(seconds=MAX_CALL_SECONDS)


# ---------------------------------------------------------------------------- pacing


async def _take_turn(key: PaceKey | None, end: float, step: str) -> None:
    if key is None:
        return
    try:
        await pacing.take_turn(key, end)
    except pacing.Throttled as throttled:
        raise AzureFailure(
            step, 429, "TooManyRequests", "throttled past the deadline", retry_after=throttled.wait
        ) from None


def _paced(key: PaceKey | None, failure: AzureFailure | None, attempt: int) -> None:
    """Tell the key's pace how the attempt went: a 429 pauses it, an answer counts as got through."""
    if key is None:
        return
    if failure is not None and failure.status == 429:
        wait = failure.retry_after if failure.retry_after is not None else backoff_seconds(attempt)
        pacing.throttled(key, wait)
    elif failure is None or failure.status not in (0, 504):  # 0, 504: no answer, or ours
        pacing.passed(key)


# ---------------------------------------------------------------------------- the call


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter: ~0.5, 1, 2 s ..."""
    return float(BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) * (0.8 + 0.4 * random.random()))  # noqa: S311


def _retryable(failure: AzureFailure, idempotent: bool) -> bool:
    if failure.status == 429:
        return True
    return idempotent and failure.transient


async def call(
    step: str,
    send: Callable[[], Awaitable[T]],
    *,
    kind: Kind = "graph",
    pace: PaceKey | None = None,
    idempotent: bool = True,
) -> T:
    """Send one Azure request (`send` builds a fresh awaitable per attempt) under the rules above.

    Raises `AzureFailure` when the request failed for good, was refused, or ran out of time.
    """
    current = _deadline.get()
    end = current if current is not None else time.monotonic() + DEFAULT_BUDGET_SECONDS
    for attempt in range(1, MAX_ATTEMPTS + 1):
        await _take_turn(pace, end, step)
        left = end - time.monotonic()
        if left <= 0:
            raise AzureFailure(step, 504, DEADLINE, "the call's deadline passed before it could be sent")
        limit = min(MAX_CALL_SECONDS, left)
        try:
            result = await asyncio.wait_for(send(), limit)
        except TimeoutError:
            code = DEADLINE if limit < MAX_CALL_SECONDS else TIMEOUT
            failure = AzureFailure(step, 504, code, f"Azure did not answer within {limit:.1f}s")
        except Exception as error:
            failure = classify(kind, step, error)
        else:
            _paced(pace, None, attempt)
            return result
        _paced(pace, failure, attempt)
        if not _retryable(failure, idempotent) or attempt == MAX_ATTEMPTS:
            raise failure
        delay = failure.retry_after if failure.retry_after is not None else backoff_seconds(attempt)
        if time.monotonic() + delay >= end:
            raise failure  # the wait alone would outlive the deadline
        log.info(
            "Azure answered %s (%s) during %s; retrying in %.1fs", failure.status, failure.code, step, delay
        )
        if not (failure.status == 429 and pace is not None):  # a paced key waits its turn
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
