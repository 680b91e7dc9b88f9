"""The deadline sweeper the HTTP clients share: it is the only timer their requests have."""

from __future__ import annotations

import asyncio

from gateway.transport.deadlines import Deadlines
from tests.waiting import until


async def test_an_expiry_that_raises_does_not_stop_the_sweeps() -> None:
    expired: list[str] = []

    def on_expired(key: str) -> None:
        expired.append(key)
        if key == "bad":
            raise RuntimeError("a bug in one expiry")

    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    deadlines: Deadlines[str] = Deadlines(on_expired)
    now = asyncio.get_running_loop().time()
    deadlines.watch("bad", now)
    deadlines.watch("same-sweep", now)  # after the bad one: the next sweep takes it
    deadlines.watch("later", now + 0.3)
    await until(lambda: expired == ["bad", "same-sweep", "later"])
    assert len(errors) == 1 and not deadlines
    deadlines.close()
