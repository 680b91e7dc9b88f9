"""What the fakes share: serving routes over HTTP(S), and the start/stop lifecycle."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_routes(posts: dict[str, Handler], host: str, port: int,
                       tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    """Serve POST routes on host:port (0: a free port); (runner, base URL)."""
    app = web.Application()
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if tls else 'http'}://{host}:{bound}"


class FakeServer:
    """`async with Fake() as fake:` for every fake: `start()` (each fake's own) sets
    `_runner` (aiohttp) or `_server` (a bare asyncio server); `stop()` closes either."""

    _runner: web.AppRunner | None = None
    _server: asyncio.AbstractServer | None = None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
