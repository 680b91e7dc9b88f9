"""The lean HTTP/2 client and server against h2, an independent implementation: the client
over TLS against an h2 server (flow control, stream limits, GOAWAY, resets, CONTINUATION,
padding, PING, deadlines), the server under an h2 client, and HPACK both ways."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.testing._http2 import Http2ServerConnection, MemoryTransport
from gateway.transport.hpack import HeaderDecoder, HeaderEncoder
from gateway.transport.http2 import ConnectionClosed, Http2Pool
from gateway.transport.http2 import StreamReset as Reset
from tests.waiting import until


# -- an h2 server, to test the client against --------------------------------------------
class H2Server(asyncio.Protocol):
    """One connection served by h2. `answer(server, stream_id, headers, body)` answers a
    request; the default echoes the body with its length and path in headers."""

    def __init__(self, owner: H2Origin):
        self.owner = owner
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.requests: dict[int, tuple[dict[str, str], bytearray]] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for window
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.append(self)
        self.conn.initiate_connection()
        if self.owner.settings:
            self.conn.update_settings(self.owner.settings)
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.owner.events.append(event)
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                self.owner.open_streams.add(event.stream_id)
                self.owner.most_open = max(self.owner.most_open, len(self.owner.open_streams))
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self.requests.pop(event.stream_id)
                self.owner.answer(self, event.stream_id, headers, bytes(body))
            elif isinstance(event, StreamReset):
                self.owner.open_streams.discard(event.stream_id)
            elif isinstance(event, WindowUpdated):
                for stream_id in list(self.pending):
                    self.send_body(stream_id, self.pending.pop(stream_id))
        self.flush()

    def respond(self, stream_id: int, headers: list[tuple[str, str]], body: bytes = b"", **data: Any) -> None:
        self.owner.open_streams.discard(stream_id)
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.send_body(stream_id, body, **data)
        self.flush()

    def send_body(self, stream_id: int, body: bytes, **data: Any) -> None:
        while body:
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(body))
            if size <= 0:
                self.pending[stream_id] = body
                return
            self.conn.send_data(stream_id, body[:size], end_stream=size == len(body), **data)
            body = body[size:]

    def flush(self) -> None:
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())


def echo(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
    server.respond(stream_id, [(":status", "200"), ("x-path", headers[":path"]), ("x-length", str(len(body)))], body)


class H2Origin:
    def __init__(self, answer: Callable[..., None] = echo, settings: dict[int, int] | None = None):
        self.answer = answer
        self.settings = settings or {}
        self.connections: list[H2Server] = []
        self.events: list[Any] = []
        self.open_streams: set[int] = set()
        self.most_open = 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def serve(ca: trustme.CA) -> AsyncIterator[Callable[..., Any]]:
    """start(origin, **pool options) -> a pool of connections to an h2 server."""
    servers: list[asyncio.AbstractServer] = []
    pools: list[Http2Pool] = []

    async def start(origin: H2Origin, **pool: Any) -> Http2Pool:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        context.set_alpn_protocols(["h2"])
        server = await asyncio.get_running_loop().create_server(lambda: H2Server(origin), "127.0.0.1", 0, ssl=context)
        servers.append(server)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        pools.append(Http2Pool("127.0.0.1", server.sockets[0].getsockname()[1], ssl=client, **pool))
        return pools[-1]

    yield start
    for pool in pools:
        await pool.aclose()
    for server in servers:
        server.close()


def request(path: str = "/a", extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"127.0.0.1"),
        (b":path", path.encode()),
        (b"content-type", b"application/json"),
        *extra,
    ]


async def test_requests_and_bodies_over_the_default_windows(serve) -> None:
    """A body larger than the server's 65,535-byte windows waits for its WINDOW_UPDATEs
    (h2 fails the connection on any overrun); responses come back whole."""
    pool = await serve(H2Origin())
    bodies = [b"", b"x", b"y" * 70_000, b"z" * 200_000, b"w" * 10]
    responses = await asyncio.gather(*(pool.request(request(f"/{i}"), body, 10) for i, body in enumerate(bodies)))
    for i, (body, response) in enumerate(zip(bodies, responses, strict=True)):
        assert response.status == 200 and response.body == body
        assert response.header(b"x-path") == f"/{i}".encode()
    assert len(pool.connections) == 1


async def test_the_servers_stream_limit_is_kept(serve) -> None:
    pending: list[tuple[H2Server, int]] = []

    def later(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        pending.append((server, stream_id))
        asyncio.get_running_loop().call_later(0.01, lambda: [echo(s, i, headers, body) for s, i in [pending.pop(0)]])

    origin = H2Origin(later, {SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    pool = await serve(origin, max_connections=1)
    responses = await asyncio.gather(*(pool.request(request(f"/{i}"), b"{}", 10) for i in range(10)))
    assert [r.header(b"x-path") for r in responses] == [f"/{i}".encode() for i in range(10)]
    assert origin.most_open == 2 and len(origin.connections) == 1


async def test_more_connections_open_when_the_streams_are_used_up(serve) -> None:
    origin = H2Origin(
        lambda *a: asyncio.get_running_loop().call_later(0.05, echo, *a), {SettingCodes.MAX_CONCURRENT_STREAMS: 3}
    )
    pool = await serve(origin, max_connections=3)
    await asyncio.gather(*(pool.request(request(), b"", 10) for i in range(9)))
    assert len(origin.connections) == 3


async def test_requests_past_a_goaway_go_again_on_a_new_connection(serve) -> None:
    def goaway_first(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        if len(server.owner.connections) == 1:
            server.conn.close_connection(last_stream_id=0)  # nothing was processed
            server.flush()
            return
        echo(server, stream_id, headers, body)

    origin = H2Origin(goaway_first)
    pool = await serve(origin)
    response = await pool.request(request(), b"{}", 10)
    assert response.status == 200 and len(origin.connections) == 2
    assert len(pool.connections) == 1 and not pool.draining  # retired, drained, closed: never counted


async def test_refused_streams_go_again_and_other_resets_fail(serve) -> None:
    count = {"n": 0}

    def reset(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        count["n"] += 1
        if headers[":path"] == "/refused" and count["n"] == 1:
            server.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        elif headers[":path"] == "/broken":
            server.conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        else:
            echo(server, stream_id, headers, body)

    pool = await serve(H2Origin(reset))
    assert (await pool.request(request("/refused"), b"", 10)).status == 200
    with pytest.raises(Reset) as error:
        await pool.request(request("/broken"), b"", 10)
    assert error.value.code == ErrorCodes.INTERNAL_ERROR
    assert (await pool.request(request("/after"), b"", 10)).status == 200  # the connection lives on


async def test_huffman_indexed_continued_and_padded_responses(serve) -> None:
    """h2 Huffman-codes and indexes its headers; a 40 KB header needs CONTINUATION frames;
    DATA frames carry padding."""
    big = "v" * 40_000

    def fancy(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        server.respond(
            stream_id,
            [(":status", "201"), ("x-big", big), ("x-path", headers[":path"]), ("server", "h2")],
            b"padded body",
            pad_length=20,
        )

    pool = await serve(H2Origin(fancy))
    for path in ("/one", "/two"):  # the second reuses the dynamic table
        response = await pool.request(request(path), b"", 10)
        assert (response.status, response.body) == (201, b"padded body")
        assert response.header(b"x-big") == big.encode() and response.header(b"x-path") == path.encode()


async def test_a_request_past_its_deadline_is_reset(serve) -> None:
    silent = H2Origin(lambda *a: None)
    pool = await serve(silent)
    with pytest.raises(TimeoutError):
        await pool.request(request(), b"{}", 0.2)
    await until(lambda: [e.error_code for e in silent.events if isinstance(e, StreamReset)] == [ErrorCodes.CANCEL])
    silent.answer = echo
    assert (await pool.request(request(), b"", 10)).status == 200
    assert not pool.connections[0].streams  # the cancelled stream was freed


async def test_pings_are_answered(serve) -> None:
    origin = H2Origin()
    pool = await serve(origin)
    await pool.request(request(), b"", 10)
    server = origin.connections[0]
    server.conn.ping(b"12345678")
    server.flush()
    await until(lambda: any(isinstance(e, PingAckReceived) and e.ping_data == b"12345678" for e in origin.events))


async def test_a_lost_connection_fails_its_requests(serve) -> None:
    def hang_up(server: H2Server, *_: Any) -> None:
        assert server.transport is not None
        server.transport.close()

    pool = await serve(H2Origin(hang_up))
    with pytest.raises(ConnectionClosed):
        await pool.request(request(), b"{}", 10)
    assert not pool.connections


async def test_a_refused_connection_fails_fast() -> None:
    probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = Http2Pool("127.0.0.1", port)
    with pytest.raises(OSError):
        await pool.request(request(), b"", 5)
    await pool.aclose()


# -- our server under an h2 client (in memory: the bytes each side writes) ----------------
def test_our_server_under_an_h2_client() -> None:
    seen: list[tuple[dict[bytes, bytes], int]] = []

    def answer(conn: Http2ServerConnection, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        seen.append((dict(headers), len(body)))
        conn.respond(stream_id, [(b":status", b"200"), (b"x-length", b"%d" % len(body))], b"ok" * 5000)

    server, to_client = Http2ServerConnection(answer), MemoryTransport()
    server.connection_made(to_client)  # type: ignore[arg-type]
    client = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    server.data_received(client.data_to_send())
    client.receive_data(to_client.take())
    sizes = [0, 5, 100_000, 300_000]  # over the default windows: our server grants more
    bodies: dict[int, bytearray] = {}
    statuses: dict[int, str] = {}
    for size in sizes:
        stream_id = client.get_next_available_stream_id()
        client.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "a.example"),
                (":path", f"/{size}"),
                ("user-agent", "h2 test"),
            ],
            end_stream=not size,
        )
        body = b"b" * size
        while body:
            chunk = min(len(body), client.local_flow_control_window(stream_id), client.max_outbound_frame_size)
            assert chunk > 0, "our server did not open its windows"
            client.send_data(stream_id, body[:chunk], end_stream=chunk == len(body))
            body = body[chunk:]
            server.data_received(client.data_to_send())
            client.receive_data(to_client.take())
        server.data_received(client.data_to_send())
        for event in client.receive_data(to_client.take()):
            if isinstance(event, ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[":status"]  # type: ignore[index]
            elif isinstance(event, DataReceived):
                bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        server.data_received(client.data_to_send())
    assert [(h[b":path"], n) for h, n in seen] == [(f"/{s}".encode(), s) for s in sizes]
    assert seen[0][0][b"user-agent"] == b"h2 test"  # Huffman coded by h2
    assert set(statuses.values()) == {"200"} and all(bytes(b) == b"ok" * 5000 for b in bodies.values())
    assert not server.streams


def test_our_server_refuses_malformed_requests() -> None:
    server, to_client = Http2ServerConnection(lambda *a: pytest.fail("answered a malformed request")), MemoryTransport()
    server.connection_made(to_client)  # type: ignore[arg-type]
    client = H2Connection(
        H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False)
    )
    client.initiate_connection()
    server.data_received(client.data_to_send())
    client.receive_data(to_client.take())
    bad = [
        [(":method", "POST"), (":path", "/")],  # no :scheme
        [(":method", "POST"), (":scheme", "https"), (":path", "/"), ("X-Upper", "a")],
        [(":method", "POST"), (":scheme", "https"), (":path", "/"), ("connection", "keep-alive")],
        [(":method", "POST"), (":scheme", "https"), ("a", "b"), (":path", "/")],
        [(":method", "POST"), (":scheme", "https"), (":path", "/"), ("a", " padded")],
    ]
    for headers in bad:
        client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
    server.data_received(client.data_to_send())
    resets = [e for e in client.receive_data(to_client.take()) if isinstance(e, StreamReset)]
    assert [e.error_code for e in resets] == [ErrorCodes.PROTOCOL_ERROR] * len(bad)
    assert len(server.rejected) == len(bad)


def test_a_bad_preface_ends_the_connection() -> None:
    server, to_client = Http2ServerConnection(lambda *a: None), MemoryTransport()
    server.connection_made(to_client)  # type: ignore[arg-type]
    server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert to_client.closed
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    events = client.receive_data(to_client.take())
    assert any(isinstance(e, ConnectionTerminated) and e.error_code == ErrorCodes.PROTOCOL_ERROR for e in events)


# -- HPACK ---------------------------------------------------------------------------------
names = st.sampled_from([b":path", b"apns-id", b"authorization", b"content-type", b"x-a", b"x-b", b"accept"])
values = st.binary(max_size=300).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F))
blocks = st.lists(st.lists(st.tuples(names, values), min_size=1, max_size=8), min_size=1, max_size=6)


@given(blocks, st.lists(st.sampled_from([4096, 256, 0, 1024]), max_size=6))
def test_our_blocks_decode_the_same_in_both_decoders(sequence, sizes) -> None:
    """One connection: the dynamic tables carry over, and shrink when the peer says so."""
    encoder = HeaderEncoder(volatile=(b":path", b"apns-id"))
    ours, reference = HeaderDecoder(), Decoder()
    for i, headers in enumerate(sequence):
        if i < len(sizes):
            encoder.set_max_size(sizes[i])
        block = encoder.encode(headers)
        assert ours.decode(block) == headers
        assert reference.decode(block, raw=True) == headers
        assert encoder.size <= encoder.max_size


@given(blocks)
def test_hpack_blocks_decode_in_ours(sequence) -> None:
    """Huffman coded, indexed and unindexed, as hpack's encoder makes them."""
    encoder, decoder = Encoder(), HeaderDecoder()
    for headers in sequence:
        assert decoder.decode(encoder.encode(headers, huffman=True)) == headers


def test_strings_go_as_plain_literals_and_repeats_as_indexes() -> None:
    encoder = HeaderEncoder(volatile=(b":path",))
    path = b"/3/device/" + b"ab" * 32
    first = encoder.encode([(b":method", b"POST"), (b":path", path), (b"apns-topic", b"com.shop.app")])
    assert path in first and b"com.shop.app" in first  # no Huffman coding
    second = encoder.encode([(b":method", b"POST"), (b":path", path), (b"apns-topic", b"com.shop.app")])
    assert second == b"\x83" + first[1 : 1 + 1 + 1 + len(path)] + b"\xbe"  # POST static, topic dynamic 62


@pytest.mark.parametrize("alpn", [["http/1.1"], None])
async def test_a_server_that_does_not_negotiate_h2_fails_the_request(ca, alpn) -> None:
    """RFC 9113 3.2: one choosing HTTP/1.1 through ALPN, one not doing ALPN at all: both
    refused at once, not left to time out."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=context)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["http/1.1"])  # the caller's context is not the pool's
    pool = Http2Pool("127.0.0.1", server.sockets[0].getsockname()[1], ssl=client, connect_timeout=5)
    with pytest.raises(OSError, match="did not negotiate HTTP/2"):
        await pool.request(request(), b"", 5)
    assert not pool.connections
    await pool.aclose()
    server.close()


async def test_a_batch_waits_for_free_streams_and_reports_each_outcome(serve) -> None:
    def mixed(server: H2Server, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        if headers[":path"] == "/reset":
            server.conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            return
        status = "404" if headers[":path"] == "/missing" else "200"
        server.respond(stream_id, [(":status", status), ("x-path", headers[":path"])], body)

    origin = H2Origin(mixed, {SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    pool = await serve(origin, max_connections=1)
    paths = [f"/{i}" for i in range(20)] + ["/missing", "/reset"]
    outcomes = await pool.request_all([(request(p), p.encode()) for p in paths], 10)
    assert [o.body for o in outcomes[:20]] == [p.encode() for p in paths[:20]]  # type: ignore[union-attr]
    assert outcomes[20].status == 404  # type: ignore[union-attr]
    assert isinstance(outcomes[21], Reset) and outcomes[21].code == ErrorCodes.INTERNAL_ERROR
    assert origin.most_open <= 3 and len(origin.connections) == 1


async def test_a_batch_past_its_deadline_times_out_queued_and_open_requests(serve) -> None:
    silent = H2Origin(lambda *a: None, {SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    pool = await serve(silent, max_connections=1)
    outcomes = await pool.request_all([(request(), b"") for _ in range(3)], 0.3)
    assert all(isinstance(o, TimeoutError) for o in outcomes)
    await until(lambda: any(isinstance(e, StreamReset) for e in silent.events))
    assert len([e for e in silent.events if isinstance(e, StreamReset)]) == 1  # only one was ever started
    assert not pool.deadlines and not pool.starved


async def test_a_starved_batch_and_its_late_streams_expire_in_one_sweep(serve) -> None:
    """A batch waits for a stream (the sweeper watches it), gets one late, and both expire
    at the same sweep: the batch's expiry ends its stream, which the sweep then skips."""
    silent = H2Origin(lambda *a: None, {SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    pool = await serve(silent, max_connections=1)
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    first = asyncio.ensure_future(pool.request_all([(request(), b"")], 0.15))
    await until(lambda: any(isinstance(e, RequestReceived) for e in silent.events))
    late = await pool.request_all([(request(), b""), (request(), b"")], 0.5)
    assert all(isinstance(o, TimeoutError) for o in [*await first, *late])
    assert len([e for e in silent.events if isinstance(e, RequestReceived)]) == 2  # one of the late ones started
    assert not errors and not pool.deadlines and not pool.starved


async def test_a_cancelled_batch_frees_its_streams(serve) -> None:
    silent = H2Origin(lambda *a: None)
    pool = await serve(silent)
    task = asyncio.create_task(pool.request_all([(request(), b"") for _ in range(4)], 10))  # noqa: RUF006
    await until(lambda: len([e for e in silent.events if isinstance(e, RequestReceived)]) == 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: [e.error_code for e in silent.events if isinstance(e, StreamReset)] == [ErrorCodes.CANCEL] * 4)
    assert not pool.connections[0].streams and not pool.deadlines


frames = st.builds(
    lambda kind, flags, stream, payload: (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    ),
    st.integers(0, 10),
    st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x2D]),
    st.sampled_from([0, 1, 2, 3]),
    st.binary(max_size=40),
)


@settings(max_examples=400)
@given(st.lists(frames, max_size=8), st.integers(1, 30))
@example([b"\x00\x00\x02\x07\x00\x00\x00\x00\x00\x00\x01"], 7)  # a GOAWAY too short to read
def test_any_frames_end_in_an_answer_or_a_goaway_never_an_exception(sequence, cut) -> None:
    """Whatever a peer sends, in whatever pieces, the connection answers, refuses the
    stream, or ends with GOAWAY: a parsing error never escapes into the event loop."""
    from gateway.transport.http2 import PREFACE

    def answer(conn: Http2ServerConnection, stream_id: int, *_: Any) -> None:
        conn.respond(stream_id, [(b":status", b"200")], b"")

    server, to_client = Http2ServerConnection(answer), MemoryTransport()
    server.connection_made(to_client)  # type: ignore[arg-type]
    wire = PREFACE + b"".join(sequence)
    for start in range(0, len(wire), cut):
        server.data_received(wire[start : start + cut])
