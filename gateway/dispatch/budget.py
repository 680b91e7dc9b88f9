"""The in-flight budget: how many deliveries one provider has outstanding, across every batch
of every job."""

from __future__ import annotations

import asyncio
from collections import deque


class InFlight:
    """A budget of deliveries in flight, taken and given back a chunk at a time, first come
    first served (a large chunk is not overtaken by smaller ones forever). A taker says how
    many it wants and how few it will start with: a batch goes out as soon as part of the
    budget is free, instead of waiting until all it wants is."""

    def __init__(self, limit: int):
        self.limit = limit
        self.free = limit
        self.waiting: deque[tuple[int, int, asyncio.Future[int]]] = deque()  # (want, least, granted)

    @property
    def backlog(self) -> int:
        """Deliveries waiting for the budget."""
        return sum(want for want, _, _ in self.waiting)

    async def acquire(self, want: int, least: int | None = None) -> int:
        """Up to `want` slots, at least `least` (default: all of `want`; never more than the
        whole budget, or it could wait forever): how many were granted."""
        least = min(want if least is None else least, self.limit)
        if not self.waiting and self.free >= least:
            granted = min(want, self.free)
            self.free -= granted
            return granted
        entry = (want, least, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        try:
            return await entry[2]
        except asyncio.CancelledError:
            waiter = entry[2]
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # granted as we were cancelled: give it back
            else:
                if entry in self.waiting:
                    self.waiting.remove(entry)
                self.release(0)  # the next in line may fit now
            raise

    def release(self, count: int) -> None:
        self.free += count
        while self.waiting and self.waiting[0][1] <= self.free:
            want, _, waiter = self.waiting.popleft()
            if waiter.cancelled():
                continue  # its task is on its way out
            granted = min(want, self.free)
            self.free -= granted
            waiter.set_result(granted)
