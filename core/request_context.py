"""Per-request values that audit entries and logs carry (request id)."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="")


def new_request_id(incoming: str | None) -> str:
    """Keep a caller's safe correlation id, else make one."""
    if incoming and len(incoming) <= 64 and all(c.isalnum() or c in "-_." for c in incoming):
        return incoming
    return uuid.uuid4().hex
