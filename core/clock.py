"""The one source of "now", so tests can move time without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    """Current time, timezone-aware UTC, shifted by any test offset."""
    return datetime.now(UTC) + _offset


def advance(delta: timedelta) -> None:
    """Move the broker's clock forward (tests only; Azure's clock in the stand-in does not move)."""
    global _offset
    _offset += delta


def reset() -> None:
    """Undo every `advance`."""
    global _offset
    _offset = timedelta(0)


def isoformat(at: datetime) -> str:
    """RFC 3339 UTC with a Z, as the API shows times."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
