"""The rotation schedule: wall-clock slots in a zone, DST, month ends, catch-up, backoff (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from core import clock
from rotation.schedule import (
    first_slot_at_or_after,
    next_rotation,
    parse_rotate_at,
    retry_delay,
    slot_on,
    zone,
)
from rotation.service import RotationSettings


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NEW_YORK = zone("America/New_York")
BERLIN = zone("Europe/Berlin")


@pytest.mark.parametrize(
    ("tz", "day", "rotate_at", "expected"),
    [
        # New York springs forward 2026-03-08 02:00 -> 03:00: 02:30 does not exist, moves to 03:30 EDT.
        (NEW_YORK, "2026-03-08", "02:30", "2026-03-08T07:30:00"),
        (NEW_YORK, "2026-03-07", "02:30", "2026-03-07T07:30:00"),  # EST the day before
        (NEW_YORK, "2026-03-09", "02:30", "2026-03-09T06:30:00"),  # EDT the day after
        # New York falls back 2026-11-01 02:00 -> 01:00: 01:30 happens twice, the first (EDT) counts.
        (NEW_YORK, "2026-11-01", "01:30", "2026-11-01T05:30:00"),
        (NEW_YORK, "2026-11-02", "01:30", "2026-11-02T06:30:00"),
        # Berlin springs forward 2026-03-29 02:00 -> 03:00 and falls back 2026-10-25 03:00 -> 02:00.
        (BERLIN, "2026-03-29", "02:15", "2026-03-29T01:15:00"),  # = 03:15 CEST
        (BERLIN, "2026-03-28", "02:15", "2026-03-28T01:15:00"),  # = 02:15 CET
        (BERLIN, "2026-10-25", "02:30", "2026-10-25T00:30:00"),  # first 02:30 is CEST
        (BERLIN, "2026-10-26", "02:30", "2026-10-26T01:30:00"),
    ],
)
def test_slots_across_dst(tz: object, day: str, rotate_at: str, expected: str) -> None:
    from datetime import date

    assert slot_on(date.fromisoformat(day), parse_rotate_at(rotate_at), tz) == utc(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tz", "slot", "days", "rotate_at", "expected"),
    [
        # Weekly at 02:00 New York: the week with the gap rotates at 03:00 EDT, then back to 02:00.
        (NEW_YORK, "2026-03-01T07:00:00", 7, "02:00", "2026-03-08T07:00:00"),
        (NEW_YORK, "2026-03-08T07:00:00", 7, "02:00", "2026-03-15T06:00:00"),
        # Daily at 01:30 New York across the fall-back night: the first 01:30, then EST.
        (NEW_YORK, "2026-10-31T05:30:00", 1, "01:30", "2026-11-01T05:30:00"),
        (NEW_YORK, "2026-11-01T05:30:00", 1, "01:30", "2026-11-02T06:30:00"),
        # Berlin: daily 02:15 across spring forward (nonexistent -> 03:15 CEST), then 02:15 CEST.
        (BERLIN, "2026-03-28T01:15:00", 1, "02:15", "2026-03-29T01:15:00"),
        (BERLIN, "2026-03-29T01:15:00", 1, "02:15", "2026-03-30T00:15:00"),
        # Berlin: every 14 days at 09:00 across the autumn change keeps 09:00 local.
        (BERLIN, "2026-10-20T07:00:00", 14, "09:00", "2026-11-03T08:00:00"),
        # Month ends: Jan 31 + 1 day, Jan 31 + 30 days (2026 is not a leap year), Feb 28 2028 + 1
        # (leap day), Dec 31 + 1 (new year), Apr 30 + 31 (a 31-day month follows).
        (BERLIN, "2026-01-31T22:30:00", 1, "23:30", "2026-02-01T22:30:00"),
        (BERLIN, "2026-01-31T22:30:00", 30, "23:30", "2026-03-02T22:30:00"),
        (NEW_YORK, "2028-02-28T17:00:00", 1, "12:00", "2028-02-29T17:00:00"),
        (NEW_YORK, "2026-12-31T17:00:00", 1, "12:00", "2027-01-01T17:00:00"),
        (BERLIN, "2026-04-30T08:00:00", 31, "10:00", "2026-05-31T08:00:00"),
    ],
)
def test_next_slot_keeps_local_time_across_dst_and_month_ends(
    tz: object, slot: str, days: int, rotate_at: str, expected: str
) -> None:
    at = parse_rotate_at(rotate_at)
    rotated = utc(slot) + timedelta(seconds=37)  # the timer fires a little late
    assert next_rotation(rotated, days, at, tz, slot=utc(slot)) == utc(expected)  # type: ignore[arg-type]


def test_a_retried_rotation_stays_on_the_grid() -> None:
    slot = utc("2026-06-01T00:00:00")  # 02:00 Berlin
    rotated = slot + timedelta(hours=3)  # three backoff retries later
    assert next_rotation(rotated, 7, time(2, 0), BERLIN, slot=slot) == utc("2026-06-08T00:00:00")


def test_first_rotation_then_at_least_interval_days_later() -> None:
    # Created (and rotated) at 15:30 Berlin on a Monday; weekly at 02:00: not 6.5 days later, 7.5.
    created = utc("2026-06-01T13:30:00")
    assert next_rotation(created, 7, time(2, 0), BERLIN) == utc("2026-06-09T00:00:00")
    # A rotate-at later in the day than the rotation: exactly N days later on that day.
    assert next_rotation(created, 7, time(18, 0), BERLIN) == utc("2026-06-08T16:00:00")


def test_catch_up_after_downtime_is_one_rotation_not_a_burst() -> None:
    clock.reset()
    now = clock.now()
    slot = now - timedelta(days=10)  # daily rotation; the broker was down for ten slots
    nxt = next_rotation(now, 1, time(2, 0), NEW_YORK, slot=slot)
    assert nxt > now + timedelta(hours=23)  # not another slot right away
    assert nxt <= now + timedelta(days=2)
    clock.advance(timedelta(days=3))
    assert clock.now() > nxt  # and the clock moves, slots do not pile up: one entry per connection


def test_first_slot_at_or_after() -> None:
    assert first_slot_at_or_after(utc("2026-06-01T00:00:00"), time(2, 0), BERLIN) == utc(
        "2026-06-01T00:00:00"
    )
    assert first_slot_at_or_after(utc("2026-06-01T00:00:01"), time(2, 0), BERLIN) == utc(
        "2026-06-02T00:00:00"
    )


def test_retry_backoff_is_exponential_and_capped() -> None:
    delays = [retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [timedelta(minutes=m) for m in (2, 4, 8, 16)]
    assert delays == sorted(delays)
    assert max(delays) == timedelta(hours=4)


@pytest.mark.parametrize("text", ["2:00", "24:00", "12:60", "12-00", "noon", "12:00:00", ""])
def test_bad_rotate_at(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_rotate_at(text)


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe/Berlinn", "../etc/passwd", "", "/UTC"])
def test_unknown_zones(name: str) -> None:
    with pytest.raises(ValueError, match="IANA"):
        zone(name)


def test_settings_model_names_the_bad_field() -> None:
    good = {"enabled": True, "clientSecretKeyId": "6d0f1c2a-0000-4000-8000-000000000001", "intervalDays": 30}
    assert RotationSettings.model_validate({**good, "rotateAt": "02:00"}).time_zone == "UTC"
    for bad, field in [
        ({"rotateAt": "25:00"}, "rotateAt"),
        ({"rotateAt": "02:00", "timeZone": "Nowhere/City"}, "timeZone"),
        ({"rotateAt": "02:00", "intervalDays": 0}, "intervalDays"),
        ({"rotateAt": "02:00", "intervalDays": 366}, "intervalDays"),
        ({"rotateAt": "02:00", "clientSecretKeyId": "not-a-uuid"}, "clientSecretKeyId"),
        ({"rotateAt": "02:00", "surprise": 1}, "surprise"),
    ]:
        with pytest.raises(ValidationError) as info:
            RotationSettings.model_validate({**good, **bad})
        assert field in {str(e["loc"][-1]) for e in info.value.errors()}, (bad, info.value.errors())
