"""The HTTP transport of Table Storage, and its failures as a 503 problem.

Azurite (a Node server) closes a keep-alive connection after 5 s idle; aiohttp keeps one for 15 s,
so a request could go out on a connection the server was closing, and azure-core never repeats a
POST ($batch, insert) that failed while being written. Here pooled connections are retired well
before the server's keep-alive ends, a request that provably never reached the server is sent
again on another connection, and whatever transport failure remains reaches the caller as a 503
with Retry-After, never a 500. Repeating a write whose outcome is unknown is left to core.tables,
which can check by reading back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from core.errors import Unavailable

if TYPE_CHECKING:
    from azure.core.pipeline.transport import AsyncHttpTransport

RETRY_AFTER_SECONDS = 5


class TablesUnavailable(Unavailable):
    """Table Storage could not be reached, or a write's outcome is unknown; nothing to fix but retry."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


KEEPALIVE_SECONDS = 2.0
"""Idle time after which a pooled connection is not reused. Azurite (Node) closes idle connections
after 5 s and aiohttp's default is 15 s: a request sent on a connection whose close is still in
flight is lost with an unknown outcome. Reconnecting after 2 s idle costs one handshake."""

SEND_ATTEMPTS = 3
"""Sends of a request that provably never reached the server (each on another connection)."""
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _unsent(error: BaseException) -> bool:
    """True if the transport failed before the request was complete on the wire.

    A failed connect, or aiohttp refusing to write to a closing transport (raised before the bytes
    are handed to the socket), means the server cannot have a complete request to act on.
    A disconnect after the request was written ("Server disconnected", a reset while reading) is
    not proof: the server may have done the work, so that is never treated as unsent.
    """
    import aiohttp

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            return True
        if isinstance(seen, aiohttp.ClientConnectionResetError) and "closing transport" in str(seen):
            return True
        if isinstance(seen, aiohttp.ClientOSError) and "Can not write request body" in str(seen):
            return True
        seen = seen.__cause__
    return False


def transport() -> AsyncHttpTransport[Any, Any]:
    """azure-core's aiohttp transport with a short keep-alive and a resend of unsent requests."""
    import aiohttp
    from azure.core.exceptions import ServiceRequestError
    from azure.core.pipeline.transport import AioHttpTransport

    class ResendingTransport(AioHttpTransport):  # type: ignore[misc]
        async def send(self, request: Any, **config: Any) -> Any:
            for attempt in range(1, SEND_ATTEMPTS + 1):
                try:
                    return await super().send(request, **dict(config))
                except ServiceRequestError as error:
                    if attempt == SEND_ATTEMPTS or not _unsent(error):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,  # azure-core decompresses itself, as with the session it builds
        # With trust_env aiohttp looks up proxies and ~/.netrc in a worker thread on every request
        # (a tenth of a sweep's CPU in `make bench`); only a configured proxy needs it.
        trust_env=_proxy_configured(),
    )
    return ResendingTransport(session=session, session_owner=True)


def _proxy_configured() -> bool:
    return any(os.environ.get(name) for name in PROXY_VARIABLES)


@contextmanager
def reachable(what: str) -> Iterator[None]:
    """Turn a transport failure (after the SDK's retries) or a server-side 5xx into a 503 problem."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    try:
        yield
    except (ServiceRequestError, ServiceResponseError) as error:
        raise TablesUnavailable(f"Table Storage did not answer ({what}); try again shortly.") from error
    except HttpResponseError as error:
        if error.status_code is not None and error.status_code >= 500:
            raise TablesUnavailable(f"Table Storage failed ({what}); try again shortly.") from error
        raise
