"""When a connection's secret rotates next: pure functions of the schedule and the clock.

A schedule is "every `interval_days` days at `rotate_at` wall-clock time in `zone`". Days are
calendar days in the zone, so the local time stays put across DST changes. A wall-clock time
that does not exist (spring forward) moves forward by the gap (02:30 -> 03:30); one that
happens twice (fall back) is the first of the two. These are exactly the semantics of a
`zoneinfo` datetime with `fold=0`, which `slot_on` relies on.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

# Exponential backoff for a failed rotation: 2, 4, 8 ... minutes, at most 4 hours.
RETRY_BASE = timedelta(minutes=2)
RETRY_MAX = timedelta(hours=4)


def parse_rotate_at(text: str) -> time:
    """`HH:MM` (24-hour) -> time; ValueError with a fix-it message otherwise."""
    match = _HH_MM.match(text)
    if not match:
        raise ValueError("must be a 24-hour time HH:MM, e.g. 02:30")
    return time(int(match.group(1)), int(match.group(2)))


def zone(name: str) -> ZoneInfo:
    """An IANA zone by name; ValueError naming the problem otherwise."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError("must be an IANA time zone name such as Europe/Berlin or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata directory ("Europe")
        raise ValueError(
            f"{name!r} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"
        ) from None


def slot_on(day: date, rotate_at: time, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of `rotate_at` on local `day`: a gap moves forward, an overlap takes the first."""
    return datetime.combine(day, rotate_at, tzinfo=tz).astimezone(UTC)  # fold=0 does both


def first_slot_at_or_after(threshold: datetime, rotate_at: time, tz: ZoneInfo) -> datetime:
    """The first rotate-at slot whose local wall-clock time is not before `threshold`'s."""
    return _first_slot_from_wall(threshold.astimezone(tz).replace(tzinfo=None), rotate_at, tz)


def _first_slot_from_wall(wall: datetime, rotate_at: time, tz: ZoneInfo) -> datetime:
    day = wall.date()
    if datetime.combine(day, rotate_at) < wall:
        day += timedelta(days=1)
    return slot_on(day, rotate_at, tz)


def next_rotation(
    rotated_at: datetime,
    interval_days: int,
    rotate_at: time,
    tz: ZoneInfo,
    *,
    slot: datetime | None = None,
) -> datetime:
    """The first rotate-at time at least `interval_days` (calendar days in `tz`) after the last rotation.

    A rotation that ran because its slot fell due (`slot`) counts as happening at that slot
    when it ran less than half an interval late (the timer fires a little late, a retry a
    little later), so "every 7 days at 02:00" stays on 02:00. Later than that (the broker was
    down) it counts from when it ran: one catch-up rotation, then `interval_days` later.
    """
    interval = timedelta(days=interval_days)
    if slot is not None and rotated_at - slot < interval / 2:
        return slot_on(slot.astimezone(tz).date() + interval, rotate_at, tz)
    # Wall-clock arithmetic: N local days later, then the first rotate-at not before it.
    later = rotated_at.astimezone(tz).replace(tzinfo=None) + interval
    return _first_slot_from_wall(later, rotate_at, tz)


def retry_delay(failures: int) -> timedelta:
    """How long to wait before retrying after `failures` consecutive failed attempts (>= 1)."""
    exponent = max(0, min(failures - 1, 20))
    delay: timedelta = RETRY_BASE * (2**exponent)
    return min(delay, RETRY_MAX)
