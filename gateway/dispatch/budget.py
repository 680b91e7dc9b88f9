"""The in-flight budget: how many deliveries one provider has outstanding, across every batch
of every job."""

from __future__ import annotations

import asyncio
from collections import deque


class InFlight:
    """A budget of deliveries in flight, taken and given back a chunk at a time, first come
    first served (a large chunk is not overtaken by smaller ones forever)."""

    def __init__(self, limit: int):
        self.free = limit
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, count: int) -> None:
        if count <= self.free and not self.waiting:
            self.free -= count
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append((count, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(count)  # granted as we were cancelled: give it back
            else:
                if (count, waiter) in self.waiting:
                    self.waiting.remove((count, waiter))
                self.release(0)  # the next in line may fit now
            raise

    def release(self, count: int) -> None:
        self.free += count
        while self.waiting and self.waiting[0][0] <= self.free:
            count, waiter = self.waiting.popleft()
            if waiter.cancelled():
                continue  # its task is on its way out
            self.free -= count
            waiter.set_result(None)
