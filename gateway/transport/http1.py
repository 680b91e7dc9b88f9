"""A lean HTTP/1.1 client for channels that POST small bodies to a configured origin.

Profiles of the webhook path put aiohttp's client at ~180 us of CPU per request on the
development machine, most of the gateway's cost per delivery; writing the request bytes
and parsing the status line, headers and body on a kept-alive connection is ~30 us. This
module does only that: POST (and any method with a body) to one origin, keep-alive
connections pooled and reused, bodies framed by Content-Length or chunked transfer coding
or connection close, 1xx responses skipped, TLS through the event loop's SSL transport,
no redirects followed, no cookies, no proxies. Channels that need more (HTTP/2 for APNs,
the web push library) keep their own clients.

A kept-alive connection the server closed while idle fails on its next request before
any response byte: that request is sent once more on a fresh connection. The channels
using this pool carry an idempotency id in every request (`webhook-id`), so a receiver
that did see the first copy drops the second.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from gateway.transport.deadlines import Deadlines
from gateway.transport.errors import AddressNotAllowed, RequestError, check_header

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = "notification-gateway"
# RFC 9112 3.2.1 origin-form: an absolute path and an optional query, visible ASCII only.
_TARGET = re.compile(r"/[!-~]*")


class HttpError(OSError):
    """The response could not be read (connection lost, malformed or oversized)."""


class Response:
    __slots__ = ("_headers", "_raw_headers", "body", "status")

    def __init__(self, status: int, raw_headers: bytes, body: bytes):
        self.status = status
        self._raw_headers = raw_headers
        self._headers: dict[str, str] | None = None
        self.body = body

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ", ". Parsed on first use: most
        callers only need the status."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for line in self._raw_headers.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if sep:
                    key = name.strip().lower().decode("latin-1")
                    text = value.strip().decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return self._headers


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3}) [\t \x21-\x7e\x80-\xff]*")


def _content_length(lower_head: bytes) -> int | None:
    """Content-Length: 1*DIGIT; repeated (or a list), the values must agree (9112 6.3)."""
    values: set[bytes] = set()
    start = 0
    while (start := lower_head.find(b"\r\ncontent-length:", start)) >= 0:
        end = lower_head.find(b"\r\n", start + 2)
        raw = lower_head[start + 17 : end if end >= 0 else None]
        values.update(v.strip() for v in raw.split(b","))
        start += 2
    if not values:
        return None
    if len(values) != 1 or not (value := values.pop()).isdigit() or len(value) > 15:
        raise HttpError("malformed content-length")
    return int(value)


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The first value of header `name` in a lower-cased header block starting with CRLF."""
    start = lower_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else None].strip()


# RFC 9112 7.1: chunk-size = 1*HEXDIG, then chunk extensions after ";" (ignored).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")


def read_chunks(buffer: bytearray, body: bytearray) -> bool:
    """Move the chunks of a chunked body from `buffer` to `body` as they complete; True
    once the last chunk (and any trailer fields) has been read. Strict: a size that is not
    1*HEXDIG (`0x3`, `+3`, `-1`, spaces) or chunk data not followed by CRLF is an error."""
    while True:
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise HttpError("malformed chunk size")
            return False
        match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
        if match is None:
            raise HttpError("malformed chunk size")
        size = int(match.group(1), 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", end)  # "0\r\n" + trailer fields + "\r\n"
            if buffer[end : end + 4] == b"\r\n\r\n":
                del buffer[: end + 4]
            elif trailer_end >= 0:
                _check_fields(bytes(buffer[end + 2 : trailer_end]))
                del buffer[: trailer_end + 4]
            else:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise HttpError("trailer fields too large")
                return False
            return True
        if len(body) + size > MAX_BODY_BYTES:
            raise HttpError("body too large")
        if len(buffer) < end + 2 + size + 2:
            return False
        if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
            raise HttpError("chunk data not followed by CRLF")
        body += buffer[end + 2 : end + 2 + size]
        del buffer[: end + 2 + size + 2]


# RFC 9110 5.1 field-name = token; the value: visible ASCII, obs-text, spaces and tabs.
_FIELD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t \x21-\x7e\x80-\xff]*")


def _check_fields(block: bytes) -> None:
    """Header (or trailer) field lines, one per CRLF: `name: value`. obs-fold (a line
    starting with a space or tab) and a bare CR are refused (RFC 9112 5.2, 2.2)."""
    if not block:
        return
    for line in block.split(b"\r\n"):
        if not _FIELD.fullmatch(line):
            if line[:1] in (b" ", b"\t"):
                raise HttpError("obs-fold in a header field")
            raise HttpError(f"malformed header field {line[:60]!r}")


class _Stale(HttpError):
    """A reused connection failed before any response byte arrived."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, parsed as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = True
        self.got_bytes = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers = b""
        self.head_done = False
        self.length: int | None = None
        self.chunked = False
        self.body = bytearray()

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.head_done and self.length is None and not self.chunked:
                self._finish()  # a body delimited by the connection's end
                return
            error = (_Stale if not self.got_bytes else HttpError)(f"connection lost: {exc or 'closed by peer'}")
            self.waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for: the connection is out of step
            return
        self.buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self.reusable = False
            self.waiter.set_exception(exc)

    # -- parsing ----------------------------------------------------------------------
    def _parse(self) -> None:
        while not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    raise HttpError("response headers too large")
                return
            self._parse_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
            if 100 <= self.status < 200:  # an interim response: the final one follows
                self._reset()
        if self.chunked:
            self._parse_chunks()
        elif self.length is not None:
            if len(self.buffer) >= self.length:
                self.body = self.buffer[: self.length]
                del self.buffer[: self.length]
                self._finish()
        else:
            self.body += self.buffer
            self.buffer.clear()
            if len(self.body) > MAX_BODY_BYTES:
                raise HttpError("response body too large")

    def _parse_head(self, head: bytes) -> None:
        """RFC 9112: a status line (HTTP-version SP 3DIGIT SP reason), field lines, and
        the body's framing: Transfer-Encoding ending in chunked, else Content-Length, else
        the connection's end."""
        line_end = head.find(b"\r\n")
        status_line = head if line_end < 0 else head[:line_end]
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise HttpError(f"malformed status line {status_line[:80]!r}")
        self.status = int(match.group(2))
        if match.group(1) == b"0":
            self.reusable = False  # HTTP/1.0
        self.raw_headers = b"" if line_end < 0 else head[line_end + 2 :]
        _check_fields(self.raw_headers)
        # Only the framing headers are read here; Response.headers parses the rest on demand.
        lower = head[line_end:].lower() if line_end >= 0 else b""
        transfer_encoding = _header(lower, b"transfer-encoding")
        content_length = _content_length(lower)
        if transfer_encoding is not None:
            codings = [c.strip() for c in transfer_encoding.split(b",")]
            if codings[-1] == b"chunked":
                self.chunked = True
            else:
                self.reusable = False  # not chunked last: the body ends when the server closes
            if content_length is not None:
                self.reusable = False  # both: a smuggling attempt, or a broken server (9112 6.3)
        elif content_length is not None:
            self.length = content_length
            if self.length > MAX_BODY_BYTES:
                raise HttpError("response body too large")
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.length = 0
        else:
            self.reusable = False  # the body ends when the server closes
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.length, self.chunked = 0, False  # these never have a body (9112 6.3)
        connection = _header(lower, b"connection")
        if connection is not None and b"close" in connection:
            self.reusable = False
        self.head_done = True

    def _parse_chunks(self) -> None:
        if read_chunks(self.buffer, self.body):
            self._finish()

    def _finish(self) -> None:
        waiter, self.waiter = self.waiter, None
        response = Response(self.status, self.raw_headers, bytes(self.body))
        self._reset()
        if self.buffer:
            self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- requests ---------------------------------------------------------------------
    async def send(self, request: bytes) -> Response:
        assert self.transport is not None and self.waiter is None
        self.got_bytes = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Kept-alive connections to the origin of `url` (http or https): at most
    `max_connections` of them (requests beyond wait for one; None: no limit), `max_idle`
    kept between requests. With `address_allowed`, a host name is resolved first and only addresses
    it accepts are connected to (the check and the connection use the same address, so
    a name cannot be re-pointed in between)."""

    def __init__(
        self,
        url: str,
        ssl: ssl_module.SSLContext | None = None,
        connect_timeout: float = 10.0,
        max_idle: int = 64,
        max_connections: int | None = 256,
        address_allowed: Callable[[str], bool] | None = None,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        self.host = parts.hostname
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # the URL's request target
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.ssl = (ssl or ssl_module.create_default_context()) if self.tls else None
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_connections = max_connections
        self.address_allowed = address_allowed
        self.in_flight = 0
        self.last_used = 0.0  # loop time of the last request's end (idle pools are closed by their owner)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()  # idle or busy
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._deadlines: Deadlines[_Connection] = Deadlines(self._expired)

    def request_bytes(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
        """The request on the wire; RequestError when it cannot be built (a header that
        would break it or inject another, a target with spaces or controls)."""
        if not _TARGET.fullmatch(target):
            raise RequestError(f"request target {target[:60]!r} is not an origin-form path and query")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}", f"User-Agent: {USER_AGENT}"]
        for name, value in headers:
            check_header(name, value)
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def post(
        self, target: str, headers: Iterable[tuple[str, str]], body: bytes, timeout: float | None = None
    ) -> Response:
        """POST `body` to `target` (path and query) on this origin."""
        request = self.request_bytes("POST", target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.in_flight += 1
        try:
            while True:
                async with asyncio.timeout_at(deadline):  # waiting for, or opening, a connection
                    connection, reused = await self._acquire()
                try:
                    return self._done(connection, await self._send(connection, request, deadline))
                except _Stale:
                    if not reused:
                        raise
                    # closed by the server while idle, before any answer: nothing was processed
        finally:
            self.in_flight -= 1
            self.last_used = loop.time()

    async def _acquire(self) -> tuple[_Connection, bool]:
        """(a connection, whether it was kept from an earlier request)."""
        while True:
            while self._idle:  # the most recently used first: the least likely to be stale
                connection = self._idle.pop()
                if not connection.closed:
                    return connection, True
                self._discard(connection)
            if self.max_connections is None or len(self._open) < self.max_connections:
                return await self._connect(), False
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        if connection in self._open:
            self._open.discard(connection)
            self._wake()

    async def _send(self, connection: _Connection, request: bytes, deadline: float | None) -> Response:
        if deadline is not None:
            self._deadlines.watch(connection, deadline)
        try:
            return await connection.send(request)
        except BaseException:
            self._discard(connection)  # a request cut short leaves the connection out of step
            raise
        finally:
            self._deadlines.forget(connection)

    @staticmethod
    def _expired(connection: _Connection) -> None:
        waiter = connection.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("no response in time"))

    def _done(self, connection: _Connection, response: Response) -> Response:
        if connection.reusable and not connection.closed and not self._closed and len(self._idle) < self.max_idle:
            self._idle.append(connection)
            self._wake()
        else:
            self._discard(connection)
        return response

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        sni = self.host if self.tls else None
        async with asyncio.timeout(self.connect_timeout):  # within the request's own deadline, if any
            if self.address_allowed is None:
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl, server_hostname=sni
                )
            else:
                connection = await self._connect_checked(loop, sni)
        self._open.add(connection)
        return connection

    async def _connect_checked(self, loop: asyncio.AbstractEventLoop, sni: str | None) -> _Connection:
        assert self.address_allowed is not None
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        allowed = [a for a in dict.fromkeys(addresses) if self.address_allowed(a)]
        if not allowed:
            raise AddressNotAllowed(f"{self.host} resolves only to addresses that are not allowed ({addresses[0]})")
        error: OSError | None = None
        for address in allowed:
            try:
                _, connection = await loop.create_connection(
                    _Connection, address, self.port, ssl=self.ssl, server_hostname=sni
                )
                return connection
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    async def aclose(self) -> None:
        self._closed = True
        self._deadlines.close()
        self._idle.clear()
        for connection in list(self._open):
            self._discard(connection)
        await asyncio.sleep(0)
