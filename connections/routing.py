"""A route class that reports errors of `method`-discriminated bodies by their JSON path.

Pydantic puts the union tag in an error's location (`body.client-secret.credentials.clientSecret`);
callers think in JSON paths (`credentials.clientSecret`). An unknown or missing `method` is
reported on the field `method`, naming the methods this route takes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

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
