"""Deadlines of requests in flight, shared by the HTTP/1.1 and HTTP/2 clients.

One timer checks them every SWEEP_SECONDS: an `asyncio.timeout` per request cost ~25 us of
the ~200 us of CPU per webhook delivery, and a request may well end a tenth of a second
after its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

SWEEP_SECONDS = 0.1  # how late a deadline may be noticed

K = TypeVar("K")


class Deadlines(Generic[K]):
    """`watch(key, deadline)` until `forget(key)`; `expired(key)` is called (once, the key
    already forgotten) for a key still watched past its deadline."""

    def __init__(self, expired: Callable[[K], None]):
        self.expired = expired
        self.at: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.at)

    def watch(self, key: K, deadline: float) -> None:
        self.at[key] = deadline
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def forget(self, key: K) -> None:
        self.at.pop(key, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        now = loop.time()
        try:
            for key in [key for key, deadline in self.at.items() if deadline <= now]:
                if key in self.at:  # an earlier one's expiry may have ended it (a batch, its streams)
                    del self.at[key]
                    self.expired(key)
        finally:  # an expiry that raised (a bug) leaves the rest to the next sweep, not to none
            if self.at and self._timer is None:  # (an expiry may have watched a key, and armed it)
                self._timer = loop.call_later(SWEEP_SECONDS, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
