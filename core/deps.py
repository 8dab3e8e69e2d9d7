"""Typed route dependencies shared by every router: who may call, and which path ids are safe.

A route names its caller's role with one alias (`caller: Admin`), and takes ids through `PathId`,
so an id that Table Storage would refuse (`#`, `?`, `/`, `\\`, control characters, over 512
characters) is a 422 naming the parameter before any lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from core.auth import Caller, Role, require

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
