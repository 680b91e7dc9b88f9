"""Serving a fake's routes over HTTP(S): what the aiohttp-based fakes share."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

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
