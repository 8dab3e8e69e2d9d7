"""What the connection routers share: path/header parameters, the router, and its error paths.

Pydantic puts the union tag in an error's location (`body.client-secret.credentials.clientSecret`);
callers think in JSON paths (`credentials.clientSecret`). An unknown or missing `method` is
reported on the field `method`, naming the methods this route takes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from connections import oauth
from connections.kinds import ConnectionChanges
from connections.models import AuthorizationStarted, UpdateConnectionBody
from core.deps import ID_PATTERN

# A connection id is a UUID; anything Table Storage could not hold (core.deps) is a 422 naming it.
ConnectionId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The connection's id")
]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256, description="ETag from a GET")]

TAGS = frozenset({"client-secret", "certificate", "oauth", "access-token"})


def _untag(error: dict[str, Any], methods: str, hints: dict[str, str]) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type")
    if kind in ("union_tag_invalid", "union_tag_not_found") and loc[:1] == ("body",):
        ctx = error.get("ctx", {}) or {}
        tag = str(ctx.get("tag", ""))
        if kind == "union_tag_not_found":
            message = f"is required: one of {methods}"
        elif tag in hints:
            message = hints[tag]
        else:
            message = f"must be one of {methods}"
        return {**error, "type": "value_error", "loc": ("body", "method"), "msg": message}
    if len(loc) > 1 and loc[0] == "body" and loc[1] in TAGS:
        return {**error, "loc": ("body", *loc[2:])}
    return error


def tagged_union_route(methods: Sequence[str], hints: dict[str, str] | None = None) -> type[APIRoute]:
    """An APIRoute class for bodies discriminated by `method` (one of `methods`).

    `hints` map a refused method to its message (e.g. oauth -> sign in with .../oauth/authorize).
    """
    known = dict(hints or {})
    listed = ", ".join(methods)

    class TaggedUnionRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route_handler(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as error:
                    errors: Sequence[Any] = error.errors()
                    raise RequestValidationError(
                        [_untag(dict(e), listed, known) for e in errors], body=error.body
                    ) from None

            return route_handler

    return TaggedUnionRoute


def connection_router(prefix: str, tag: str, methods: Sequence[str]) -> APIRouter:
    """The router of one connection kind: create bodies tagged by `methods`; oauth is by sign-in only."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        route_class=tagged_union_route(
            methods, {"oauth": f"oauth connections are created by signing in: POST {prefix}/oauth/authorize"}
        ),
    )


def set_etag(response: Response, etag: str | None) -> None:
    if etag:
        response.headers["ETag"] = etag


def changes_of(body: UpdateConnectionBody) -> ConnectionChanges:
    """A PATCH body's connection changes (only the fields present change)."""
    return ConnectionChanges(
        name=body.name,
        description=body.description,
        description_set="description" in body.model_fields_set,
        credentials=body.credentials,
    )


def authorization_started(url: str) -> AuthorizationStarted:
    return AuthorizationStarted(
        authorization_url=url,
        expires_in=int(oauth.STATE_TTL.total_seconds()),
        redirect_uri=oauth.redirect_uri(),
    )
