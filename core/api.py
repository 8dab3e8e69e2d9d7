"""The FastAPI app: middleware (Edge, BodyLimit), error handlers, docs, and every domain's router.

Built once per process by `create_app()`; `function_app.py` wraps it for the Functions host
and the local runner serves it with uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import PayloadTooLarge, render, unexpected
from core.request_context import new_request_id, request_id

MAX_BODY_BYTES = 256 * 1024
log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies over MAX_BODY_BYTES with 413, whether or not Content-Length says so."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        # Bodies are small JSON: read them whole (bounded), then replay to the app.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = render(PayloadTooLarge(f"The request body is larger than {self.limit} bytes."))
        await response(scope, receive, send)


class Edge:
    """The outermost middleware: a request id on every response, and the last word on errors.

    An exception that escapes the app is logged by type (core.errors.unexpected) and answered
    with a 500 here, so it never reaches Starlette's ServerErrorMiddleware, uvicorn or the
    Functions host, which would log its traceback with the exception's text.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = new_request_id(incoming or None)
        token = request_id.set(rid)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            response = unexpected(error, scope.get("method", ""), scope.get("path", ""))
            if not started:
                await response(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class LazyApp:
    """An ASGI app built on its first request (or first `.app` access).

    Declaring ~30 FastAPI routes costs more than importing FastAPI itself; a worker started
    for a timer never needs them, and the Functions host indexes functions without them.
    """

    def __init__(self, build: Callable[[], FastAPI]) -> None:
        self._build = build
        self._app: FastAPI | None = None

    @property
    def app(self) -> FastAPI:
        if self._app is None:
            self._app = self._build()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    """When the server stops, close every SDK client this loop opened (no session left open)."""
    yield
    from core.loop_cache import close_all

    await close_all()


def create_app(routers: Sequence[APIRouter]) -> FastAPI:
    """The API with the given domain routers (health and audit are always on)."""
    from core import audit, health
    from core.deps import safe_path_ids
    from core.errors import install_problem_handlers

    # azure-core logs every request's headers at INFO: noise (and cost) in Application Insights.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    app = FastAPI(
        title="azure-credential-broker",
        version="1.0.0",
        description="App connections to Azure, automatic client secret rotation, and Entra ID leases.",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
        lifespan=_lifespan,
        dependencies=[Depends(safe_path_ids)],
    )
    install_problem_handlers(app)
    for router in (health.router, audit.router, *routers):
        app.include_router(router)

    app.add_middleware(BodyLimit)
    app.add_middleware(Edge)  # added last: outermost
    return app
