"""Recipients' time zones and wall-clock arithmetic that is right across DST.

Local time is a function of the instant: `wall(t)`. Everything here is defined from it,
which is what a minute-by-minute oracle checks:
- the next occurrence of a wall-clock time `hh:mm` after an instant is the first later
  instant at which the wall clock reads it: a time inside a spring-forward gap occurs at
  the jump past it, and a time that a fall-back repeats occurs twice.

Offsets are cached per zone and UTC minute, so the hot path computes each at most once.
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TIMEZONE_FALLBACK = "timezone_fallback"


@functools.cache
def iana_names() -> frozenset[str]:
    """The zone names tzdata ships (no directories such as `America`, no `posix/` or
    `right/` copies): the only names a recipient's `timezone` may use."""
    return frozenset(zoneinfo.available_timezones())


@functools.lru_cache(maxsize=4096)
def zone(name: str | None) -> ZoneInfo | None:
    """The zone, or None when the name is not an IANA zone (the caller falls back);
    never an exception, whatever upstream sends."""
    if not name or name not in iana_names():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # an unreadable or damaged zone file
        return None


def resolve(name: str | None, fallback: ZoneInfo) -> tuple[ZoneInfo, bool]:
    """(zone, fell_back)."""
    found = zone(name)
    return (found, False) if found is not None else (fallback, True)


@functools.lru_cache(maxsize=65536)
def _offset_seconds(tz: ZoneInfo, utc_minute: int) -> int:
    local = datetime.fromtimestamp(utc_minute * 60, UTC).astimezone(tz)
    return int(local.utcoffset().total_seconds())  # type: ignore[union-attr]


def offset(tz: ZoneInfo, instant: float) -> int:
    """Seconds east of UTC at `instant` (zone offsets change on minute boundaries)."""
    return _offset_seconds(tz, int(instant // 60))


def wall(tz: ZoneInfo, instant: float) -> datetime:
    """The naive local wall-clock time at `instant`."""
    return datetime.fromtimestamp(instant + offset(tz, instant), UTC).replace(tzinfo=None)


def _whole_seconds(t: float) -> int:
    """Floor to the second after rounding to microseconds as datetime.fromtimestamp does,
    so the arithmetic below and `wall()` never disagree about an instant."""
    whole = math.floor(t)
    if t - whole < 0.9999990:  # far from the next second: no rounding can reach it
        return whole
    return whole + 1 if round((t - whole) * 1e6) >= 1_000_000 else whole


def utc_minute(instant: float) -> int:
    """The UTC minute containing `instant`, rounded as datetime does."""
    return _whole_seconds(instant) // 60


def minutes_of_day(tz: ZoneInfo, instant: float) -> int:
    """Local minute of the day, by arithmetic on the cached offset (no datetime)."""
    return (_whole_seconds(instant) + offset(tz, instant)) // 60 % 1440


def local_day(tz: ZoneInfo, instant: float) -> int:
    """Local calendar day as a day number since 1970-01-01 (no datetime)."""
    return (_whole_seconds(instant) + offset(tz, instant)) // 86400


def instants_of(tz: ZoneInfo, local: datetime) -> list[float]:
    """Every instant at which the wall clock reaches naive `local`: one, two when a
    fall-back repeats it, or for a time inside a spring-forward gap the jump past it."""
    first = local.replace(tzinfo=tz, fold=0).timestamp()
    if wall(tz, first) == local:
        second = local.replace(tzinfo=tz, fold=1).timestamp()
        return [first, second] if second != first and wall(tz, second) == local else [first]
    # In a gap: the clock jumps past `local` at the transition, which lies between the
    # two readings of `local` (fold=1 uses the offset after the jump, fold=0 before it).
    lo = local.replace(tzinfo=tz, fold=1).timestamp()
    hi = first
    if lo > hi:
        lo, hi = hi, lo
    while hi - lo > 1:  # the transition instant, to the second
        mid = (lo + hi) // 2
        if wall(tz, mid) < local:
            lo = mid
        else:
            hi = mid
    return [float(hi)]


def transition_between(tz: ZoneInfo, start: float, stop: float) -> float | None:
    """The first instant in (start, stop] where the zone's offset differs from its offset
    at `start`, or None. Zones change offset at most once in a few days, and on minute
    boundaries, so a binary search over minutes finds it."""
    before = offset(tz, start)
    if offset(tz, stop) == before:
        return None
    lo, hi = int(start // 60), int(stop // 60)  # offset(lo) == before != offset(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offset(tz, mid * 60) == before:
            lo = mid
        else:
            hi = mid
    return float(hi * 60)


def next_wall_time(tz: ZoneInfo, instant: float, at: time, inclusive: bool = True) -> float:
    """The next instant (>= `instant` when inclusive) at which the wall clock reads `at`.

    The search starts the day before `instant`'s wall date: a time in a spring-forward gap
    that ends at midnight (America/Nuuk's 23:00-00:00) happens at the jump, which the wall
    clock already reads as the next day."""
    day: date = wall(tz, instant).date() - timedelta(days=1)
    for _ in range(4):
        for candidate in instants_of(tz, datetime.combine(day, at)):
            if candidate > instant or (inclusive and candidate == instant):
                return candidate
        day += timedelta(days=1)
    raise AssertionError("unreachable: a wall-clock time occurs at least once in four days")


def parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))
