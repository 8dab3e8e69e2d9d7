"""How fast the broker may call Azure for one (tenant, app): learned from that key's 429s.

Graph throttles per app and tenant and answers a 429 with how long to wait (Retry-After). Only
waiting that out keeps a busy key at the edge of its limit: after every pause all waiting calls
go at once, most meet another 429, and a call unlucky several times in a row fails although the
tenant was only busy. So a key learns a pace from its 429s:

- a 429 pauses the key for its Retry-After, and sets the key's pace 10% under the rate its
  calls got through at in the seconds before, or under its current pace if that is lower (the
  rate at which the limit was met); the first few 429s of a busy key bring the pace under its
  limit, where it stays without further 429s;
- while paced, calls go one per `1 / rate` seconds, in the order they asked;
- a key with no 429 for `FORGET_AFTER` is unpaced again (its limit may have been raised, or the
  tenant's other traffic gone), and learns afresh from its next 429.

A single 429 among few calls teaches nothing (there is no rate to learn from): it only pauses.
Keys are process-wide (one Functions worker) and case-insensitive; every loop and task shares them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

PaceKey = tuple[str, str]

WINDOW_SECONDS = 2.0  # the calls that got through in this window are the rate a 429 learns from
MIN_TO_LEARN = 3  # fewer calls than this in the window: nothing to learn, the 429 only pauses
BELOW = 0.9  # the pace is set this far under the rate at which the limit was met
FORGET_AFTER = 60.0  # seconds without a 429 after which a key is unpaced again


class Throttled(Exception):
    """The key's next turn comes at or after the caller's end."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"throttled for {wait:.1f}s")
        self.wait = wait


@dataclass
class _Pace:
    resume_at: float = 0.0  # monotonic time before which no call may go (the last Retry-After)
    rate: float | None = None  # calls per second while paced; None: unpaced
    next_turn: float = 0.0  # monotonic time the next paced call may go
    throttled_at: float = 0.0
    passed: deque[float] = field(default_factory=deque)  # when calls got through, last WINDOW

    def trim(self, now: float) -> None:
        while self.passed and self.passed[0] < now - WINDOW_SECONDS:
            self.passed.popleft()


_paces: dict[PaceKey, _Pace] = {}


def _pace(key: PaceKey) -> _Pace:
    return _paces.setdefault((key[0].lower(), key[1].lower()), _Pace())


def paused_for(key: PaceKey) -> float:
    """Seconds until `key`'s last Retry-After has passed (0: not paused; its pace may still space calls)."""
    return max(0.0, _pace(key).resume_at - time.monotonic())


def rate(key: PaceKey) -> float | None:
    """The key's learned pace in calls per second (None: unpaced)."""
    return _pace(key).rate


async def take_turn(key: PaceKey, end: float) -> None:
    """Wait for `key`'s next turn; `Throttled` at once if it would come at or after `end`."""
    pace = _pace(key)
    while True:
        now = time.monotonic()
        if pace.resume_at > now:
            if pace.resume_at >= end:
                raise Throttled(pace.resume_at - now)
            await asyncio.sleep(pace.resume_at - now)  # another 429 may extend it: look again
            continue
        if pace.rate is None:
            return
        turn = max(now, pace.next_turn)
        if turn >= end:
            raise Throttled(turn - now)
        pace.next_turn = turn + 1.0 / pace.rate
        if turn <= now:
            return
        await asyncio.sleep(turn - now)
        if pace.resume_at <= time.monotonic():
            return  # else a 429 came meanwhile: wait it out, then take a new turn


def passed(key: PaceKey) -> None:
    """A call for `key` got through (any answer but a 429)."""
    pace = _pace(key)
    now = time.monotonic()
    pace.passed.append(now)
    pace.trim(now)
    if pace.rate is not None and now - pace.throttled_at > FORGET_AFTER:
        pace.rate = None


def throttled(key: PaceKey, retry_after: float) -> None:
    """A call for `key` was answered 429: pause for `retry_after`, and learn a pace."""
    pace = _pace(key)
    now = time.monotonic()
    first = pace.resume_at <= now  # the calls in flight when it came answer 429 too: learn once
    pace.resume_at = max(pace.resume_at, now + retry_after)
    pace.throttled_at = now
    pace.trim(now)
    if first and len(pace.passed) >= MIN_TO_LEARN:
        span = max(1.0, now - pace.passed[0])  # a key busy for less than the window: its own time
        got_through = len(pace.passed) / span
        pace.rate = BELOW * (got_through if pace.rate is None else min(pace.rate, got_through))
        pace.next_turn = max(pace.next_turn, pace.resume_at)
