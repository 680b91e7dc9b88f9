"""The fakes' HTTP/1.1 server (`gateway.testing._http1`) against real clients: aiohttp's,
the gateway's lean client, and raw sockets for framing, ordering and bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.testing._http1 import Request, Response, json_response, serve_http1
from gateway.transport.http1 import Http1Pool


class Echo:
    """Answers with what it got; a request with `slow` in its path waits first."""

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def __call__(self, request: Request) -> Any:
        self.seen.append(request)
        answer = json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "body": request.body.decode(),
                "sig": request.headers.get("Webhook-Signature"),
            },
            headers={"X-Count": str(len(self.seen))},
        )
        if "slow" in request.path:
            return self._later(answer)
        if "drop" in request.path:
            request.transport.abort()
            return None
        return answer

    async def _later(self, answer: Response) -> Response:
        await asyncio.sleep(0.05)
        return answer


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, str]]:
    handler = Echo()
    server, url = await serve_http1(handler, "127.0.0.1", 0)
    yield handler, url
    server.close()
    await server.wait_closed()


async def raw(url: str, data: bytes | list[bytes], read_until_close: bool = True) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for piece in data if isinstance(data, list) else [data]:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 2)
        return await asyncio.wait_for(reader.read(65536), 2)
    finally:
        writer.close()


async def test_aiohttp_client_keep_alive_chunked_and_expect_continue(echo) -> None:
    handler, url = echo
    async with aiohttp.ClientSession() as session:
        for i in range(3):  # one connection, kept alive
            async with session.post(f"{url}/hook?n={i}", data=b"abc", headers={"webhook-signature": "v1,x"}) as r:
                assert r.status == 200 and r.headers["X-Count"] == str(i + 1)
                assert await r.json() == {
                    "method": "POST",
                    "path": "/hook",
                    "query": f"n={i}",
                    "body": "abc",
                    "sig": "v1,x",
                }

        async def chunks() -> AsyncIterator[bytes]:
            for piece in (b"he", b"llo ", b"world"):
                yield piece

        async with session.post(f"{url}/chunked", data=chunks()) as r:  # Transfer-Encoding: chunked
            assert (await r.json())["body"] == "hello world"
        async with session.post(f"{url}/expect", data=b"x" * 5000, expect100=True) as r:
            assert (await r.json())["body"] == "x" * 5000
        async with session.post(f"{url}/slow", data=b"late") as r:  # an awaitable answer
            assert (await r.json())["body"] == "late"
    assert len({id(r.transport) for r in handler.seen[:3]}) == 1


async def test_lean_client_against_it(echo) -> None:
    _, url = echo
    pool = Http1Pool(f"{url}/hook")
    try:
        answers = await asyncio.gather(
            *(pool.post("/hook", [("Content-Type", "application/json")], b'{"n":%d}' % i, 5) for i in range(20))
        )
        assert {a.status for a in answers} == {200}
        assert sorted(int(a.headers["x-count"]) for a in answers) == list(range(1, 21))
    finally:
        await pool.aclose()


async def test_pipelined_requests_are_answered_in_order(echo) -> None:
    _, url = echo
    request = b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%s"
    # the first is slow, the second fast: the answers still come in request order
    data = await raw(
        url,
        request % (b"slow", b"1")
        + request % (b"fast", b"2")
        + b"POST /last HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    bodies = [part.split(b"\r\n\r\n", 1)[1][:60] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [b'"path":"/slow"' in bodies[0], b'"path":"/fast"' in bodies[1], b'"path":"/last"' in bodies[2]] == [
        True,
        True,
        True,
    ]
    assert b"Connection: close" in data


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nNo colon here\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nNot a name: x\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n", b"400"),  # a bare LF inside a line
        (b"POST /x HTTP/1.1\r\nContent-Length: many\r\n\r\n", b"400"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"413"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    ],
)
async def test_bad_requests_get_a_4xx_and_the_connection_closes(echo, request_bytes: bytes, status: bytes) -> None:
    _, url = echo
    data = await raw(url, request_bytes)
    assert data.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in data


async def test_http_1_0_closes_unless_asked_and_a_dropped_request_gets_no_answer(echo) -> None:
    _, url = echo
    data = await raw(url, b"POST /old HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data
    assert await raw(url, b"POST /drop HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == b""


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=120), max_size=6))
def test_any_split_of_a_request_parses_the_same(cuts: list[int]) -> None:
    body = b'7\r\n{"a":1}\r\n3\r\n,xy\r\n0\r\nTrailer: t\r\n\r\n'
    message = (
        b"POST /split?q=1 HTTP/1.1\r\nHost: x\r\nX-Repeat: a\r\nx-repeat: b\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
    )
    points = sorted({c % len(message) for c in cuts} - {0})
    pieces = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]

    async def scenario() -> None:
        seen: list[Request] = []

        def handler(request: Request) -> Response:
            seen.append(request)
            return Response(204)

        server, url = await serve_http1(handler, "127.0.0.1", 0)
        try:
            data = await raw(url, pieces)
        finally:
            server.close()
        assert data.startswith(b"HTTP/1.1 204")
        (request,) = seen
        assert (request.path, request.query, request.body) == ("/split", "q=1", b'{"a":1},xy')
        assert request.headers["X-REPEAT"] == "a, b" and "host" in request.headers

    asyncio.run(scenario())
