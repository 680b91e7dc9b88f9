"""What the fakes share: the start/stop lifecycle."""

from __future__ import annotations

import asyncio
from typing import Any, Self


class FakeServer:
    """`async with Fake() as fake:` for every fake: `start()` (each fake's own) sets
    `_server`; `stop()` closes it."""

    _server: asyncio.AbstractServer | None = None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
