"""Waiting on conditions, never for fixed times: a test that sleeps 50 ms for something to
happen fails on a loaded machine and wastes time on an idle one."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

POLL = 0.005


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """Return as soon as `condition()` holds (it may be async); fail after `timeout`
    seconds, which only a broken test reaches, so it can be generous."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {what or condition}")
        await asyncio.sleep(POLL)
