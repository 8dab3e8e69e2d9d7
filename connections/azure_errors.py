"""Deadline and retry of the connection-validation calls, until they move onto core.azure_gateway.

The problem bodies are the gateway's table (core.azure_problems); only these two transport
helpers remain here, because the gateway turns a refusal into an `AzureFailure` whose problem
body loses the per-field fix-it messages the connection API promises (`credentials.clientSecret`
and friends). Every rotation call, and every call made with a stored connection's credentials
(core.azure_credentials), already goes through the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from core.azure_gateway import backoff_seconds
from core.azure_problems import timeout_problem, unreachable_problem
from core.retry_after import retry_after_seconds

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

T = TypeVar("T")

# Overall deadline of one step (all retries included). Tests lower it to exercise timeouts quickly.
STEP_TIMEOUT_SECONDS = 30.0
# Transient answers worth another try, how often, and the longest wait we accept between tries.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A POST that redeems something (an authorization code) is retried only when Azure says it did not process it.
RETRY_STATUSES_NOT_IDEMPOTENT = frozenset({429, 503})
MAX_ATTEMPTS = 4
MAX_RETRY_DELAY_SECONDS = 10.0


async def within_deadline(call: Awaitable[T], step: str, seconds: float | None = None) -> T:
    """Await an Azure call under the step's deadline: a 504 problem instead of a hang."""
    limit = STEP_TIMEOUT_SECONDS if seconds is None else seconds
    try:
        return await asyncio.wait_for(call, limit)
    except TimeoutError:
        raise timeout_problem(step, limit) from None


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    *,
    step: str,
    retry_statuses: frozenset[int] = RETRY_STATUSES,
) -> httpx.Response:
    """Send a raw REST request, retrying throttling and 5xx with bounded backoff (Retry-After first).

    Returns the last response (the caller turns a final 429/5xx into a problem); a transport
    timeout is a 504 problem, a connection failure a 502 after the retries.
    """
    import httpx

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = await send()
        except httpx.TimeoutException:
            raise timeout_problem(step) from None
        except httpx.TransportError as error:
            if attempt == MAX_ATTEMPTS:
                raise unreachable_problem(step, error) from None
            await asyncio.sleep(backoff_seconds(attempt))
            continue
        if response.status_code not in retry_statuses or attempt == MAX_ATTEMPTS:
            return response
        delay = retry_after_seconds(response.headers)
        if delay is None:
            delay = backoff_seconds(attempt)
        if delay > MAX_RETRY_DELAY_SECONDS:
            return response  # Azure asks for a longer pause than a request should wait
        log.info("Azure answered %s during %s; retrying in %.1fs", response.status_code, step, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
