"""Injectable time: everything that reads the time or waits takes a Clock, so tests of
retries, expiry (and later caps and quiet hours) never sleep in real time."""

from __future__ import annotations

import asyncio
import time


class Clock:
    def now(self) -> float:
        """Wall-clock epoch seconds (decisions, expiry, idempotency TTLs)."""
        return time.time()

    def monotonic(self) -> float:
        """For measuring durations."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock(Clock):
    """A clock that moves only when told to; `sleep` advances it instantly."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)
