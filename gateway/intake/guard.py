"""A header read timeout in front of aiohttp's server, which has none.

A client that opens a connection and sends a request's head a byte at a time (slowloris)
would hold the connection, and its memory, for as long as it likes: aiohttp only times
out idle keep-alive connections. `GuardedProtocol` wraps aiohttp's request handler and
closes a connection that has started a request but not finished its head within
`header_timeout`. Bodies have their own limit (`server.body_timeout`, in the handlers),
and while a handler runs the connection is not timed (`busy`).

It reads one private attribute of aiohttp's RequestHandler, `_request_count` (heads
parsed on the connection): aiohttp is bounded in pyproject.toml, and
tests/intake/test_guard.py fails loudly if the attribute goes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

# Connections by id(transport), for the middleware that marks a request in progress.
GUARDS: dict[int, GuardedProtocol] = {}


class GuardedProtocol(asyncio.Protocol):
    def __init__(self, inner: RequestHandler, header_timeout: float):
        self.inner = inner
        self.header_timeout = header_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None  # asyncio's or uvloop's (which is no asyncio.Transport subclass)
        self.heads = 0  # request heads aiohttp has parsed on this connection
        self.pending_since: float | None = None  # bytes of an unfinished head arrived since
        self.busy = 0  # handlers running for this connection's requests
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol, forwarded ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        GUARDS[id(transport)] = self
        self.inner.connection_made(transport)
        self._timer = self.loop.call_later(self.header_timeout / 2, self._check)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        heads = self.inner._request_count
        if heads != self.heads:
            self.heads, self.pending_since = heads, None
        elif self.pending_since is None and not self.busy:
            self.pending_since = self.loop.time()

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            GUARDS.pop(id(self.transport), None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __getattr__(self, name: str) -> Any:  # anything else aiohttp asks of its handler
        return getattr(self.inner, name)

    # -- the clock -------------------------------------------------------------------------
    def request_started(self) -> None:
        self.busy += 1

    def request_finished(self) -> None:
        self.busy -= 1
        self.pending_since = None  # the bytes seen so far were that request's

    def _check(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        since = self.pending_since
        if since is not None and not self.busy and self.loop.time() - since > self.header_timeout:
            transport.close()  # the head did not arrive in time
            return
        self._timer = self.loop.call_later(self.header_timeout / 2, self._check)


class _ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR with a traceback: a client's
    garbage would fill the operator's log. Its 400 is answered; here it is one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args, record.exc_info = "malformed request: %s", (str(exc).splitlines()[0],), None
            return log.isEnabledFor(logging.DEBUG)
        return True


# The logger the server's request handlers use (server.py passes it to aiohttp).
log = logging.getLogger("gateway.http")
log.addFilter(_ClientErrors())
