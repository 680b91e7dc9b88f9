"""Our HTTP/1.1 client held to RFC 9112, checked against h11 (an independent
implementation) in both directions, and fuzzed from the server's side; the fakes' own
parser fuzzed from the client's side.

The client's connection runs over a transport in memory: each case is the exact bytes a
server sends, in arbitrary pieces.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.testing._http1 import Response as FakeResponse
from gateway.testing._http1 import _Connection as FakeServerConnection
from gateway.testing._http2 import MemoryTransport
from gateway.transport.errors import RequestError
from gateway.transport.http1 import Http1Pool, HttpError, Response, _Connection


async def exchange(wire: bytes, cut: int = 10_000) -> tuple[Response | Exception, _Connection]:
    """What our client makes of `wire` as a server's answer, fed `cut` bytes at a time."""
    connection = _Connection()
    connection.connection_made(MemoryTransport())  # type: ignore[arg-type]
    answer = asyncio.ensure_future(connection.send(b"GET / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0)
    for start in range(0, len(wire), cut):
        connection.data_received(wire[start : start + cut])
    if not answer.done():
        connection.connection_lost(None)  # the server closes: a body delimited by the close ends
    try:
        return await asyncio.wait_for(answer, 1), connection
    except HttpError as exc:
        return exc, connection


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",  # no CRLF after the data
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n folded\r\n\r\nabc",  # obs-fold
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # conflicting lengths
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",  # status is 3DIGIT
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_malformed_responses_are_errors(wire: bytes) -> None:
    outcome, connection = await exchange(wire)
    assert isinstance(outcome, HttpError), outcome
    assert not connection.reusable


async def test_chunk_extensions_and_trailers_are_read() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=v\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    outcome, connection = await exchange(wire, cut=3)
    assert isinstance(outcome, Response) and outcome.body == b"abc" and connection.reusable


async def test_transfer_encoding_with_content_length_closes_the_connection() -> None:
    """9112 6.3: chunked wins, and the connection is not used again."""
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    outcome, connection = await exchange(wire)
    assert isinstance(outcome, Response) and outcome.body == b"abc" and not connection.reusable


async def test_a_transfer_coding_other_than_chunked_last_reads_until_close() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw bytes"
    outcome, connection = await exchange(wire)
    assert isinstance(outcome, Response) and outcome.body == b"raw bytes" and not connection.reusable


def test_request_targets_are_origin_form_only() -> None:
    pool = Http1Pool("http://127.0.0.1:1/hook")
    for target in ("/a b", "http://x/", "*", "/a\r\nX: y", "a", "/é"):
        with pytest.raises(RequestError):
            pool.request_bytes("POST", target, [], b"")


def test_connections_per_origin_are_bounded_by_default() -> None:
    assert Http1Pool("http://127.0.0.1:1/hook").max_connections == 256


# -- against h11 -------------------------------------------------------------------------------
tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).filter(
    lambda t: t not in ("content-length", "transfer-encoding", "connection") and not t.startswith("-")
)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
    """A well-formed response (RFC 9112): (wire, status, body)."""
    status = draw(st.sampled_from([200, 201, 202, 400, 404, 410, 429, 500, 503]))
    body = draw(st.binary(max_size=200))
    head = [f"HTTP/1.1 {status} {draw(st.sampled_from(['OK', 'Nope', '']))}"]
    head += [f"{name}: {value}" for name, value in draw(st.lists(st.tuples(tokens, values), max_size=4))]
    if draw(st.booleans()):
        head.append("Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 60), max_size=5))
        chunks, pos = [], 0
        for size in sizes:
            piece = body[pos : pos + size]
            pos += len(piece)
            if piece:
                ext = draw(st.sampled_from(["", ";a=b", ";x"]))
                chunks.append(f"{len(piece):{draw(st.sampled_from(['x', 'X']))}}{ext}\r\n".encode() + piece + b"\r\n")
        body = body[:pos]
        payload = b"".join(chunks) + b"0\r\n" + draw(st.sampled_from([b"", b"X-T: 1\r\n"])) + b"\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    return "\r\n".join(head).encode() + b"\r\n\r\n" + payload, status, body


def h11_reads(wire: bytes) -> tuple[int, bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    status, body = 0, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body
        elif event is h11.NEED_DATA:
            raise AssertionError("h11 wants more")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(responses(), st.integers(1, 50))
def test_well_formed_responses_read_as_h11_reads_them(response: tuple[bytes, int, bytes], cut: int) -> None:
    wire, status, body = response
    assert h11_reads(wire) == (status, body)
    outcome, _ = asyncio.run(exchange(wire, cut))
    assert isinstance(outcome, Response), outcome
    assert (outcome.status, outcome.body) == (status, body)


header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["POST", "PUT"]),
    st.from_regex(r"/[a-z0-9/_.~-]{0,20}(\?[a-z0-9=&]{0,10})?", fullmatch=True),
    st.lists(st.tuples(tokens, header_values), max_size=5),
    st.binary(max_size=300),
)
def test_our_requests_read_as_h11_reads_them(method: str, target: str, headers: list[Any], body: bytes) -> None:
    """The other direction: what our client writes, an independent server parses back."""
    pool = Http1Pool("http://127.0.0.1:8080/hook")
    wire = pool.request_bytes(method, target, headers, body)
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method.decode(), request.target.decode()) == (method, target)
    got = [(n.decode(), v.decode()) for n, v in request.headers if n not in (b"host", b"user-agent", b"content-length")]
    assert got == [(n, v) for n, v in headers]
    data = b""
    while isinstance(event := server.next_event(), h11.Data):
        data += event.data
    assert isinstance(event, h11.EndOfMessage) and data == body


# -- fuzz both sides -------------------------------------------------------------------------------
noise = st.one_of(
    responses().map(lambda r: r[0]),
    st.binary(max_size=120),
    st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n", b"0\r\n", b"ffffffff\r\n"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(noise, min_size=1, max_size=4), st.integers(1, 40))
def test_any_server_bytes_end_in_a_response_or_an_error(pieces: list[bytes], cut: int) -> None:
    """Whatever a server sends: a Response or an HttpError, never another exception, never
    a wait past the connection's end."""
    outcome, _ = asyncio.run(exchange(b"".join(pieces), cut))
    assert isinstance(outcome, (Response, HttpError)), outcome


requests = st.one_of(
    st.builds(
        lambda method, target, body, chunked: (
            f"{method} {target} HTTP/1.1\r\nHost: x\r\n".encode()
            + (
                b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
                if chunked and body
                else f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
        ),
        st.sampled_from(["POST", "GET"]),
        st.sampled_from(["/", "/push/a", "/v1/projects/p/messages:send"]),
        st.binary(max_size=60),
        st.booleans(),
    ),
    st.binary(max_size=120),
    st.sampled_from([b"POST / HTTP/1.1\r\n", b"Content-Length: -1\r\n", b"\r\n", b"zz\r\n", b" folded\r\n"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(requests, min_size=1, max_size=4), st.integers(1, 40))
def test_the_fakes_server_takes_any_client_bytes(pieces: list[bytes], cut: int) -> None:
    """The fakes' parser, from the client's side: it answers (200 or 4xx) or closes, and no
    exception escapes into the event loop."""

    async def scenario() -> None:
        transport = MemoryTransport()
        server = FakeServerConnection(lambda request: FakeResponse(200, b"ok"))
        server.connection_made(transport)  # type: ignore[arg-type]
        wire = b"".join(pieces)
        for start in range(0, len(wire), cut):
            if transport.closed:
                break
            server.data_received(wire[start : start + cut])
            await asyncio.sleep(0)
        written = transport.take()
        assert not written or written.startswith(b"HTTP/1.1 ")

    asyncio.run(scenario())
