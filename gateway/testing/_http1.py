"""A small HTTP/1.1 server for the fakes that take thousands of requests a second.

In the benchmarks the fake providers share two cores with the gateway they measure, and
aiohttp's server cost the webhook receiver ~260 us of CPU per request on the development
machine: more than the gateway spent sending it, so the runs measured the fake. This
server parses the request line and headers, reads bodies framed by Content-Length or
chunked transfer coding, answers `Expect: 100-continue`, keeps connections alive
(HTTP/1.1, or HTTP/1.0 asking for it), serves TLS through the event loop's SSL transport,
and answers requests on a connection in order.

A handler takes a `Request` and returns a `Response`, or an awaitable of one when it has
to wait (injected latency); None means it dealt with the connection itself (a fault that
drops it).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HttpError(Exception):
    pass


def read_chunks(buffer: bytearray, body: bytearray) -> bool:
    """The request's chunked body (RFC 9112 7.1), read apart from the gateway's client on
    purpose: the fakes must not share a parsing bug with what they test. True once the
    last chunk and the trailer section are in `body`; HttpError when malformed."""
    pos = 0
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return False
        size_field = bytes(buffer[pos:line_end]).split(b";")[0].rstrip(b" \t")
        if not size_field or len(size_field) > 15 or any(c not in _HEX for c in size_field):
            raise HttpError("malformed chunk size")
        size = int(size_field, 16)
        data_start = line_end + 2
        if size == 0:
            if buffer[data_start : data_start + 2] == b"\r\n":
                del buffer[: data_start + 2]
                return True
            section_end = buffer.find(b"\r\n\r\n", line_end)
            if section_end < 0:
                return False
            del buffer[: section_end + 4]
            return True
        data_end = data_start + size
        if len(buffer) < data_end + 2:
            return False
        if buffer[data_end : data_end + 2] != b"\r\n":
            raise HttpError("chunk data not followed by CRLF")
        body += buffer[data_start:data_end]
        if len(body) > MAX_BODY_BYTES:
            raise HttpError("body too large")
        pos = data_end + 2
        del buffer[:pos]
        pos = 0


log = logging.getLogger(__name__)
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
# A header name (RFC 9110 token). Lines are split, not matched by one regex over the
# block: with a VAPID or JWT header, the regex cost 16 us a request, the split 2 us.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_json = msgspec.json.Encoder()


class Headers(dict[str, str]):
    """Request headers by lower-case name (repeats joined with ", "); lookups ignore case."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key.lower() if isinstance(key, str) else key)


class Request:
    __slots__ = ("body", "headers", "method", "path", "query", "transport")

    def __init__(self, method: str, path: str, query: str, headers: Headers, body: bytes, transport: asyncio.Transport):
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body, self.transport = body, transport


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, _json.encode(data), {"Content-Type": "application/json", **(headers or {})})


Handler = Callable[[Request], "Response | Awaitable[Response | None] | None"]


async def after(delay: float, answer: Callable[..., Response | None], *args: Any) -> Response | None:
    """`answer(*args)` after `delay` seconds: what a handler returns to answer late."""
    await asyncio.sleep(delay)
    return answer(*args)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler):
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a handler is still working on the previous request
        self.continued = False  # "100 Continue" sent for the request being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while not transport.is_closing():
            try:
                parsed = self._parse()
            except _BadRequest as exc:
                self._write(exc.status, exc.message.encode(), None, keep_alive=False)
                return
            if parsed is None:
                return
            request, keep_alive = parsed
            try:
                result = self.handler(request)
            except Exception:
                log.exception("fake server handler failed")
                result = Response(500, b"handler failed")
            if result is None or isinstance(result, Response):
                self._answer(result, keep_alive)
                continue
            self.busy = True
            task = asyncio.ensure_future(result)
            task.add_done_callback(functools.partial(self._resume, keep_alive=keep_alive))
            return

    def _resume(self, task: asyncio.Future[Response | None], keep_alive: bool) -> None:
        self.busy = False
        if task.cancelled():
            result: Response | None = None
        elif task.exception() is not None:
            log.error("fake server handler failed", exc_info=task.exception())
            result = Response(500, b"handler failed")
        else:
            result = task.result()
        self._answer(result, keep_alive)
        if self.transport is not None and not self.transport.is_closing():
            self._serve()

    def _answer(self, response: Response | None, keep_alive: bool) -> None:
        if response is not None:
            self._write(response.status, response.body, response.headers, keep_alive)

    def _write(self, status: int, body: bytes, headers: dict[str, str] | None, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Length: {len(body)}\r\n"
        if headers:
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if not keep_alive:
            head += "Connection: close\r\n"
        transport.write(head.encode("latin-1") + b"\r\n" + body)
        if not keep_alive:
            transport.close()

    def _parse(self) -> tuple[Request, bool] | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise _BadRequest(431, "request headers too large")
            return None
        head = bytes(buffer[:end]).decode("latin-1")
        line_end = head.find("\r\n")
        request_line = (head if line_end < 0 else head[:line_end]).split(" ")
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = request_line
        headers = Headers()
        for line in head[line_end + 2 :].split("\r\n") if line_end >= 0 else ():
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name) or "\n" in value or "\r" in value:
                raise _BadRequest(400, "malformed header line")  # not "name: value" on a line of its own
            key = name.lower()
            value = value.strip(" \t")
            previous = dict.get(headers, key)
            headers[key] = value if previous is None else f"{previous}, {value}"
        start = end + 4

        def get(name: str) -> str:  # names here are lower case already
            return dict.get(headers, name) or ""

        if "chunked" in get("transfer-encoding").lower():
            body = bytearray()
            rest = buffer[start:]
            try:
                complete = read_chunks(rest, body)
            except HttpError as exc:
                raise _BadRequest(400, str(exc)) from None
            if not complete:
                self._continue(headers)
                return None
            del buffer[:]
            buffer += rest
        else:
            try:
                length = int(get("content-length") or "0")
            except ValueError:
                raise _BadRequest(400, "malformed content-length") from None
            if not 0 <= length <= MAX_BODY_BYTES:
                raise _BadRequest(413, "request body too large")
            if len(buffer) < start + length:
                self._continue(headers)
                return None
            body = buffer[start : start + length]
            del buffer[: start + length]
        self.continued = False
        connection = get("connection").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        path, _, query = target.partition("?")
        assert self.transport is not None
        return Request(method, path, query, headers, bytes(body), self.transport), keep_alive

    def _continue(self, headers: Headers) -> None:
        if not self.continued and dict.get(headers, "expect", "").lower() == "100-continue":
            self.continued = True
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def serve_http1(
    handler: Handler, host: str, port: int, tls: ssl.SSLContext | None = None, engine: str = "gateway"
) -> tuple[Any, str]:
    """Serve `handler` on host:port (0: a free port); (server, base URL). `engine`:
    "gateway" (this module's server) or "aiohttp" (aiohttp's, an implementation the
    gateway's client shares nothing with)."""
    if engine == "aiohttp":
        return await _serve_aiohttp(handler, host, port, tls)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(handler), host, port, ssl=tls)
    bound = server.sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://{host}:{bound}"


class _AiohttpServer:
    """What FakeServer.stop needs of a server (`close`, `wait_closed`), for aiohttp's."""

    def __init__(self, runner: Any):
        self.runner = runner

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        await self.runner.cleanup()


async def _serve_aiohttp(handler: Handler, host: str, port: int, tls: ssl.SSLContext | None) -> tuple[Any, str]:
    from aiohttp import web

    async def route(request: web.Request) -> web.StreamResponse:
        headers = Headers()
        for name, value in request.headers.items():
            key = name.lower()
            previous = dict.get(headers, key)
            headers[key] = value if previous is None else f"{previous}, {value}"
        assert request.transport is not None
        ours = Request(
            request.method, request.path, request.query_string, headers, await request.read(), request.transport
        )
        answer = handler(ours)
        if answer is not None and not isinstance(answer, Response):
            answer = await answer
        if answer is None:  # the handler dealt with the connection (dropped it)
            request.transport.close()
            return web.Response(status=500)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = runner.addresses[0][1]
    return _AiohttpServer(runner), f"{'https' if tls else 'http'}://{host}:{bound}"
