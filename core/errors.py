"""Errors as RFC 9457 problem+json, raised by services and rendered by one set of handlers.

Every 4xx/5xx the API answers goes through `problem_response`, so no handler can leak
a stack trace or an exception's text that might hold a secret; unexpected errors are logged
by type and stack, never by their text (`unexpected`).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://github.com/azure-credential-broker/azure-credential-broker/blob/main/docs/errors.md#"


@dataclass(frozen=True)
class FieldError:
    """One input problem: the field (dotted camelCase path) and how to fix it."""

    field: str
    message: str


class Problem(Exception):
    """A problem the caller can act on; subclasses fix the status, title and type code in the class line."""

    status = 400
    title = "Bad request"
    code = "bad-request"

    def __init_subclass__(cls, status: int = 0, title: str = "", code: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.title, cls.code = status or cls.status, title or cls.title, code or cls.code

    def __init__(
        self,
        detail: str,
        errors: list[FieldError] | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}
        if code:
            self.code = code

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"


class BadRequest(Problem):
    """The request cannot be done as sent (a bad value that no field-level check catches)."""


class Unauthorized(Problem, status=401, title="Unauthorized", code="unauthorized"):
    """No valid caller: the token is missing, expired or not for this API."""


class Forbidden(Problem, status=403, title="Forbidden", code="forbidden"):
    """The caller is known, but its role does not allow this."""


class NotFound(Problem, status=404, title="Not found", code="not-found"):
    """No such record (or route)."""


class Conflict(Problem, status=409, title="Conflict", code="conflict"):
    """The record's current state forbids this (a name taken, a lost race, work in progress)."""


class PreconditionFailed(Problem, status=412, title="Precondition failed", code="precondition-failed"):
    """If-Match names a version the record no longer has."""


class PayloadTooLarge(Problem, status=413, title="Payload too large", code="payload-too-large"):
    """The body is over the API's size limit."""


class Unprocessable(Problem, status=422, title="Unprocessable content", code="validation-failed"):
    """Fields that parse but cannot be used (Azure refused them, or they contradict each other)."""


class UpstreamError(Problem, status=502, title="Upstream error", code="upstream-error"):
    """Azure answered with an error that is not the caller's to fix."""


class Unavailable(Problem, status=503, title="Service unavailable", code="unavailable"):
    """A dependency is down or throttling; Retry-After says when to try again."""


class UpstreamTimeout(Problem, status=504, title="Upstream timeout", code="upstream-timeout"):
    """Azure did not answer in time; the outcome of the call is unknown."""


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "errors": [{"field": e.field, "message": e.message} for e in errors or []],
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_message(item: dict[str, Any]) -> str:
    kind = str(item.get("type", ""))
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field; remove it"
    if kind == "json_invalid":
        return "the body is not valid JSON: " + str(item.get("ctx", {}).get("error", "parse error"))
    message = str(item.get("msg", "is invalid"))
    return message.removeprefix("Value error, ")


def _validation_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [FieldError(_location(tuple(e.get("loc", ()))), _validation_message(e)) for e in exc.errors()]
    malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
    if malformed:
        return problem_response(
            400, "Malformed JSON", "The request body is not valid JSON.", code="malformed-json", errors=errors
        )
    return problem_response(
        422,
        "Unprocessable content",
        "The request has invalid fields; see errors.",
        code="validation-failed",
        errors=errors,
    )


def _http_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}
    detail = exc.detail if isinstance(exc.detail, str) else titles.get(exc.status_code, "HTTP error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = "No route matches this path. The API lives under /api/v1; see /api/docs."
    if exc.status_code == 405:
        detail = "This route does not accept that method; see /api/docs."
    return problem_response(
        exc.status_code,
        titles.get(exc.status_code, "HTTP error"),
        detail,
        code=titles.get(exc.status_code, "http-error").lower().replace(" ", "-"),
        headers=dict(exc.headers or {}),
    )


def render(problem: Problem) -> JSONResponse:
    """The problem+json response for a Problem (handlers and middleware both answer with it)."""
    return problem_response(
        problem.status,
        problem.title,
        problem.detail,
        code=problem.code,
        errors=problem.errors,
        headers=problem.headers,
        extra=problem.extra,
    )


def _domain_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return render(exc)


def unexpected(error: BaseException, method: str, path: str) -> JSONResponse:
    """Log an unhandled error by type and stack only, and answer a bare 500.

    The exception's text (and any it was raised from) may carry anything, a URL with a token or
    a secret, so neither the log nor the response shows it; `core.api.Edge` calls this so the
    error never reaches the server's own traceback logging either.
    """
    stack = "".join(traceback.format_tb(error.__traceback__)).rstrip()
    log.error("unhandled %s on %s %s\n%s", type(error).__name__, method, path, stack)
    return problem_response(
        500, "Internal error", "The broker hit an unexpected error; it was logged.", code="internal-error"
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to problem+json."""
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(Problem, _domain_problem)
    # Anything else is caught by core.api.Edge, outside Starlette's ServerErrorMiddleware, which
    # would re-raise it to the server (and its traceback, message included, to the logs).
