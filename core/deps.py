"""Typed route dependencies shared by every router: who may call, and which path ids are safe.

A route names its caller's role with one alias (`caller: Admin`), and takes ids through `PathId`,
so an id that Table Storage would refuse (`#`, `?`, `/`, `\\`, control characters, over 512
characters) is a 422 naming the parameter before any lookup. `safe_path_ids` applies the same
rule to every route of the app (core.api installs it), so a route that still declares a plain
`str` cannot pass such an id to Table Storage either.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Request

from core.auth import Caller, Role, require
from core.errors import FieldError, Unprocessable

Admin = Annotated[Caller, Depends(require(Role.ADMIN))]
Operator = Annotated[Caller, Depends(require(Role.OPERATOR))]
Reader = Annotated[Caller, Depends(require(Role.READER))]

# Table Storage keys may not hold / \ # ? or control characters (U+0000-U+001F, U+007F-U+009F).
ID_PATTERN = r"^[^/\\#?\x00-\x1f\x7f-\x9f]+$"
ID_MAX_LENGTH = 512

PathId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=ID_MAX_LENGTH,
        pattern=ID_PATTERN,
        description="an id as the API returned it (no / \\ # ? or control characters, at most 512)",
    ),
]

_SAFE_ID = re.compile(ID_PATTERN)


async def safe_path_ids(request: Request) -> None:
    """An app-wide dependency: every path parameter obeys PathId's rule, or 422 naming it."""
    errors = [
        FieldError(name, f"must be 1-{ID_MAX_LENGTH} characters without / \\ # ? or control characters")
        for name, value in request.path_params.items()
        if isinstance(value, str) and (len(value) > ID_MAX_LENGTH or not _SAFE_ID.match(value))
    ]
    if errors:
        raise Unprocessable("The request has invalid fields; see errors.", errors)
