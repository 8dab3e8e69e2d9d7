"""NCRONTAB (six fields, seconds first) as the Functions timer trigger reads it.

The local runner uses it to fire the same jobs on the same schedules as Azure does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 6),
)
_NAMES = {
    "month": {
        m: i
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
        )
    },
    "weekday": {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


@dataclass(frozen=True)
class Schedule:
    """The set of allowed values of each field."""

    second: frozenset[int]
    minute: frozenset[int]
    hour: frozenset[int]
    day: frozenset[int]
    month: frozenset[int]
    weekday: frozenset[int]

    def _minute_matches(self, at: datetime) -> bool:
        return (
            at.month in self.month
            and at.day in self.day
            and at.hour in self.hour
            and at.minute in self.minute
            and (at.weekday() + 1) % 7 in self.weekday
        )

    def next_after(self, at: datetime) -> datetime:
        """The first matching whole second strictly after `at` (searched minute by minute)."""
        candidate = at.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(60 * 24 * 366 * 5):
            if self._minute_matches(candidate):
                seconds = [s for s in sorted(self.second) if s >= candidate.second]
                if seconds:
                    return candidate.replace(second=seconds[0])
            candidate = candidate.replace(second=0) + timedelta(minutes=1)
        raise ValueError("schedule never fires")


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.lower().split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError(f"{name}: step must be at least 1")
        if part in ("*", ""):
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, name), _value(b, name)
        else:
            start = _value(part, name)
            end = high if step > 1 else start
        if name == "weekday" and end == 7:
            end = 6
            values.add(0)
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{name}: {text!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, name: str) -> int:
    names = _NAMES.get(name, {})
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number")
    return int(text)


def parse_ncrontab(expression: str) -> Schedule:
    """Parse `{second} {minute} {hour} {day} {month} {day-of-week}`; ValueError says what is wrong."""
    parts = expression.split()
    if len(parts) != 6:
        raise ValueError(
            "NCRONTAB needs 6 fields (second minute hour day month weekday), "
            f"got {len(parts)}: {expression!r}"
        )
    fields = [_field(text, name, low, high) for text, (name, low, high) in zip(parts, _FIELDS, strict=True)]
    return Schedule(*fields)
