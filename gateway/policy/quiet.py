"""Quiet hours: a daily window in the recipient's local time when a channel stays silent.

`quiet` is a pure function of the instant's wall-clock time in the recipient's zone, so
it is correct across DST by construction; the release time is the first instant after
which the wall clock has left the window (see `zones.next_wall_time`). Deferred messages
are spread over `spread` seconds after the release, by a hash of the recipient, so a
million deferred pushes do not reach the providers in the same second.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import time
from zoneinfo import ZoneInfo

from gateway.policy.zones import minutes_of_day, next_wall_time, transition_between, utc_minute


@dataclass(frozen=True)
class Window:
    start: time
    end: time

    def contains(self, minute_of_day: int) -> bool:
        start = self.start.hour * 60 + self.start.minute
        end = self.end.hour * 60 + self.end.minute
        if start == end:
            return False  # an empty window
        if start < end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end  # crosses midnight

    def quiet(self, tz: ZoneInfo, instant: float) -> bool:
        return self.contains(minutes_of_day(tz, instant))

    def release(self, tz: ZoneInfo, instant: float) -> float | None:
        """None when `instant` is not quiet, else the first instant the window is over:
        the next time the wall clock reads `end`, unless a DST change before it throws
        the wall clock out of the window (a fall-back to before `start`).

        Quietness and the release are the same for every instant of a UTC minute (offsets
        change on minute boundaries), so they are computed once per zone and minute."""
        return _release(self, tz, utc_minute(instant))

    def _release_at(self, tz: ZoneInfo, instant: float) -> float | None:
        if not self.quiet(tz, instant):
            return None
        t = instant
        for _ in range(4):
            end = next_wall_time(tz, t, self.end, inclusive=False)
            jump = transition_between(tz, t, end)
            if jump is not None and jump < end and not self.quiet(tz, jump):
                return jump
            if not self.quiet(tz, end):
                return end
            t = end  # a spring-forward gap skipped the whole outside of the window
        raise AssertionError("a quiet-hours window that never ends")


@functools.lru_cache(maxsize=65536)
def _release(window: Window, tz: ZoneInfo, minute: int) -> float | None:
    return window._release_at(tz, minute * 60.0)


def spread_offset(key: str, spread: float) -> float:
    """A deterministic offset in [0, spread): the same recipient always gets the same."""
    if spread <= 0:
        return 0.0
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return float(int(int.from_bytes(digest, "big") / 2**64 * spread))  # whole seconds: readable release times
