"""Instants as the API shows them: RFC 3339 in UTC (`2026-11-28T13:00:00Z`, with the
fraction of a second when there is one). Stores keep epoch seconds."""

from __future__ import annotations

import functools
import math
import time


@functools.lru_cache(maxsize=4096)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def rfc3339(instant: float) -> str:
    """What `datetime.fromtimestamp(instant, UTC).isoformat()` says, with `Z`: the second's
    text is cached (a batch's decisions share it), the microseconds rounded as datetime
    rounds them (half to even)."""
    fraction, whole = math.modf(instant)
    micro = round(fraction * 1e6)
    second = int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    elif micro < 0:
        second, micro = second - 1, micro + 1_000_000
    return _second(second) + (f".{micro:06d}Z" if micro else "Z")
