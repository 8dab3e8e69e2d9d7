"""Durations as the API writes them: `90s`, `15m`, `1h`, `1h30m`, `7d`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d{1,9})([dhms])")
_WHOLE = re.compile(r"^(?:\d{1,9}[dhms])+$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """Parse a duration; ValueError explains the accepted form."""
    if not isinstance(text, str) or not _WHOLE.match(text.strip()):
        raise ValueError("use a duration such as 90s, 15m, 1h, 1h30m or 7d")
    units = [unit for _, unit in _PART.findall(text.strip())]
    if len(set(units)) != len(units) or units != sorted(units, key="dhms".index):
        raise ValueError("write each unit once, largest first (for example 1h30m)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text.strip()))
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration can be at most 3650d")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest form that parses back to `delta` (whole seconds)."""
    seconds = int(delta.total_seconds())
    out = ""
    for unit, size in _UNIT_SECONDS.items():
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"
