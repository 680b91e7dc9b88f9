"""The lean HTTP/1.1 client against real servers: aiohttp's, raw sockets for the edge
cases of framing and connection reuse, and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.http1 import Http1Pool, HttpError
from tests.waiting import until


async def serve_routes(
    posts: dict[str, Any], host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    """aiohttp's server on POST routes (0: a free port); (runner, base URL)."""
    app = web.Application()
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"{'https' if tls else 'http'}://{host}:{bound}"


class RawServer:
    """Answers each request on a connection with `respond(n)` (bytes or a list of pieces
    written one by one), n counting requests over all connections."""

    def __init__(self, respond: Callable[[int], Any], close_after: bool = False):
        self.respond = respond
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?x=1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                reply = self.respond(len(self.requests) - 1)
                for piece in reply if isinstance(reply, list) else [reply]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_against_aiohttp_reuses_one_connection_and_reads_everything() -> None:
    peers: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        assert request.path_qs == "/hook?x=1" and request.headers["webhook-id"] == "msg_1"
        body = await request.read()
        return web.Response(status=429, body=body[::-1], headers={"Retry-After": "7"})

    runner, base = await serve_routes({"/hook": hook}, "127.0.0.1", 0)
    try:
        pool = Http1Pool(f"{base}/hook")
        for _ in range(5):
            response = await pool.post("/hook?x=1", [("webhook-id", "msg_1")], b"abc", timeout=5)
            assert (response.status, response.body, response.headers["retry-after"]) == (429, b"cba", "7")
        await pool.aclose()
    finally:
        await runner.cleanup()
    assert len(set(peers)) == 1  # kept alive


@pytest.mark.parametrize(
    "reply, body",
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi", b"hi"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nSet-Cookie: b\r\nContent-Length: 0\r\n\r\n", b""),
    ],
)
async def test_framing(reply: bytes, body: bytes) -> None:
    async with RawServer(lambda n: reply) as server:
        pool = Http1Pool(server.url)
        for _ in range(3):
            response = await pool.post("/hook", [], b"{}", timeout=5)
            assert response.body == body
        await pool.aclose()
    assert server.connections == 1
    if b"Set-Cookie" in reply:
        assert response.headers["set-cookie"] == "a, b"


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 60), max_size=12), chunked=st.booleans())
def test_any_split_of_the_response_parses_the_same(cuts: list[int], chunked: bool) -> None:
    payload = b'{"status": "delivered", "id": "msg_1234567890"}'
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(payload[i : i + 7]), payload[i : i + 7]) for i in range(0, len(payload), 7))
        + b"0\r\n\r\n"
        if chunked
        else ok(payload)
    )
    pieces, rest = [], reply
    for cut in cuts:
        if rest:
            pieces.append(rest[:cut])
            rest = rest[cut:]
    pieces.append(rest)

    async def scenario() -> None:
        async with RawServer(lambda n: [p for p in pieces if p]) as server:
            pool = Http1Pool(server.url)
            assert (await pool.post("/hook", [], b"x", timeout=5)).body == payload
            assert (await pool.post("/hook", [], b"x", timeout=5)).body == payload
            await pool.aclose()
        assert server.connections == 1

    asyncio.run(scenario())


async def test_a_body_ended_by_close_and_connection_close_are_not_reused() -> None:
    async with RawServer(lambda n: b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close_after=True) as server:
        pool = Http1Pool(server.url)
        assert (await pool.post("/hook", [], b"", timeout=5)).body == b"until the end"
        assert (await pool.post("/hook", [], b"", timeout=5)).body == b"until the end"
        await pool.aclose()
    assert server.connections == 2
    async with RawServer(lambda n: ok(extra=b"Connection: close\r\n")) as server:
        pool = Http1Pool(server.url)
        await pool.post("/hook", [], b"", timeout=5)
        await pool.post("/hook", [], b"", timeout=5)
        await pool.aclose()
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with RawServer(lambda n: ok()) as server:
        pool = Http1Pool(server.url)
        await pool.post("/hook", [], b"1", timeout=5)
        for w in server.writers:  # the server drops its idle keep-alive connection
            w.close()
        await until(lambda: all(c.closed for c in pool._idle), what="the pool saw the close")
        assert (await pool.post("/hook", [], b"2", timeout=5)).status == 200
        await pool.aclose()
    assert server.connections == 2 and len(server.requests) == 2


async def test_cut_malformed_oversized_and_slow_responses_raise() -> None:
    cases = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then closed
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for reply in cases:
        async with RawServer(lambda n, reply=reply: reply, close_after=True) as server:
            pool = Http1Pool(server.url)
            with pytest.raises(HttpError):
                await pool.post("/hook", [], b"", timeout=5)
            await pool.aclose()
    async with RawServer(lambda n: [b"HTTP/1.1 200 OK\r\n"]) as server:  # never finishes its head
        pool = Http1Pool(server.url)
        with pytest.raises(TimeoutError):
            await pool.post("/hook", [], b"", timeout=0.2)
        assert pool._idle == []  # a timed-out connection is out of step: never reused
        await pool.aclose()


async def test_refused_connection_and_header_injection() -> None:
    pool = Http1Pool("http://127.0.0.1:1/hook")
    with pytest.raises(OSError):
        await pool.post("/hook", [], b"", timeout=5)
    with pytest.raises(ValueError):
        pool.request_bytes("POST", "/hook", [("x-id", "a\r\nInjected: yes")], b"")
    with pytest.raises(ValueError):
        Http1Pool("ftp://example.com/")


async def test_https_with_a_private_ca() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def hook(request: web.Request) -> web.Response:
        return web.Response(text=request.headers["Host"])

    runner, base = await serve_routes({"/hook": hook}, "127.0.0.1", 0, tls=server_tls)
    port = int(base.rsplit(":", 1)[1])
    try:
        pool = Http1Pool(f"https://127.0.0.1:{port}/hook", ssl=client_tls)
        response = await pool.post("/hook", [], b"{}", timeout=5)
        assert (response.status, response.body) == (200, f"127.0.0.1:{port}".encode())
        await pool.aclose()
        untrusted = Http1Pool(f"https://127.0.0.1:{port}/hook")  # the system CAs do not know it
        with pytest.raises(ssl.SSLError):
            await untrusted.post("/hook", [], b"{}", timeout=5)
    finally:
        await runner.cleanup()
