"""NCRONTAB parsing (the timers' schedules) and API durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.durations import format_duration, parse_duration
from core.ncrontab import parse_ncrontab


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 * * * * *", "2026-11-23T10:00:30", "2026-11-23T10:01:00"),
        ("*/15 * * * * *", "2026-11-23T10:00:14", "2026-11-23T10:00:15"),
        ("30 */5 * * * *", "2026-11-23T10:01:00", "2026-11-23T10:05:30"),
        ("0 0 2 * * *", "2026-11-23T02:00:00", "2026-11-24T02:00:00"),
        ("0 0 9 * * mon", "2026-11-23T09:00:01", "2026-11-30T09:00:00"),
        ("0 0 0 1 jan *", "2026-11-23T00:00:00", "2027-01-01T00:00:00"),
        ("0 0 12 29 2 *", "2026-11-23T00:00:00", "2028-02-29T12:00:00"),
    ],
)
def test_next_fire_time(expression: str, after: str, expected: str) -> None:
    assert parse_ncrontab(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * * *", "6 fields"),
        ("61 * * * * *", "second"),
        ("0 * 24 * * *", "hour"),
        ("0 * * * * funday", "weekday"),
        ("*/0 * * * * *", "step"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_ncrontab(expression)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("7d", 604800), ("1d2h3m4s", 93784)],
)
def test_durations_parse_and_format(text: str, seconds: int) -> None:
    delta = parse_duration(text)
    assert delta == timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1.5h", "-1h", "1x", "30m1h", "1h1h", "0s", "3651d", " 1 h", "1H"]
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|unit|zero|3650d"):
        parse_duration(text)
