"""The one OAuth redirect target of every Azure connection kind.

`GET /organization/app-connections/azure/oauth/callback?code&state` (or `?error&state`): the
state says which kind and which pending request; the answer is the created connection as JSON,
or a small HTML page when a browser asks for HTML. Failures keep their 4xx status either way.
No bearer token here: the browser comes from Entra; the state (issued to an Admin) authorizes.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from connections import oauth, store
from connections.oauth import CALLBACK_PATH
from connections.routes import view_of
from connections.store import KIND_LABEL, ConnectionRecord
from core.errors import Problem, render

router = APIRouter(tags=["oauth"])


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split("text/html")[0]


def _page(status: int, title: str, lines: list[str]) -> HTMLResponse:
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return HTMLResponse(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


async def _connection_body(created: ConnectionRecord) -> dict[str, Any]:
    """The created connection as its kind's routes show it (with the hooks' block, if any)."""
    record = await store.get_record(created.kind, created.id)
    return await view_of(created.kind, record)


@router.get(
    CALLBACK_PATH,
    summary="OAuth redirect target for Azure connections (Entra ID sends the browser here)",
    responses={200: {"description": "The created connection (JSON), or an HTML page for a browser"}},
)
async def oauth_callback(
    request: Request,
    state: Annotated[str, Query(max_length=512)] = "",
    code: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    error_description: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    try:
        created = await oauth.complete_authorization(state, code, error, error_description)
    except Problem as problem:
        if _wants_html(request):
            return _page(problem.status, "The connection was not created", [problem.detail])
        return render(problem)
    body = await _connection_body(created)
    if _wants_html(request):
        title = KIND_LABEL.get(created.kind, created.kind)
        return _page(
            200,
            "Connection created",
            [
                f"The {title} connection {body.get('name')} is ready (id {body.get('id')}).",
                "You can close this window.",
            ],
        )
    return JSONResponse(body, status_code=200, headers={"Cache-Control": "no-store"})
