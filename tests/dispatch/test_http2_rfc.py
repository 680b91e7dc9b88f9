"""Our HTTP/2 client held to RFC 9113, frame by frame, and fuzzed from the server's side.

A client connection runs over a transport in memory: the test plays the server with raw
frames, so every case is exactly the bytes the RFC talks about, and the fuzzer can send
anything. (The end-to-end tests against h2's server are in test_http2.py.)
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.testing._http2 import MemoryTransport
from gateway.transport.hpack import HeaderEncoder
from gateway.transport.http2 import (
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONTINUATIONS,
    MAX_FRAME_SIZE,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    SETTINGS,
    Batch,
    Http2ClientConnection,
    Http2Pool,
    Response,
    frame,
    settings_frame,
)

END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


class Client:
    """One client connection in memory, with a request on stream 1."""

    def __init__(self, pool: Http2Pool):
        self.pool = pool
        self.transport = MemoryTransport()
        self.conn = Http2ClientConnection(pool)
        pool.connections.append(self.conn)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.server_sends(settings_frame({}))
        self.batch = Batch(pool, [([(b":method", b"GET"), (b":path", b"/")], b"")], pool.loop.time() + 60)
        self.batch.pump()
        self.encoder = HeaderEncoder()

    def server_sends(self, *frames: bytes) -> None:
        self.conn.data_received(b"".join(frames))

    def headers(self, stream_id: int, status: bytes = b"200", flags: int = END_STREAM | END_HEADERS) -> bytes:
        return frame(HEADERS, flags, stream_id, self.encoder.encode([(b":status", status)]))

    def goaway_code(self) -> int | None:
        """The error code of the GOAWAY the client sent, if it sent one."""
        wire = self.transport.take()
        pos = wire.find(b"PRI * HTTP/2.0")
        if pos >= 0:
            wire = wire[pos + 24 :]
        while len(wire) >= 9:
            length = int.from_bytes(wire[:3], "big")
            kind = wire[3]
            payload = wire[9 : 9 + length]
            if kind == GOAWAY:
                return int(struct.unpack(">LL", payload[:8])[1])
            wire = wire[9 + length :]
        return None


@pytest.fixture
async def client() -> Any:
    pool = Http2Pool("127.0.0.1", 1)
    yield lambda: Client(pool)
    await pool.aclose()


async def test_a_response_settles_the_request(client) -> None:
    c = client()
    c.server_sends(c.headers(1))
    assert isinstance(c.batch.outcomes[0], Response) and c.batch.outcomes[0].status == 200


@pytest.mark.parametrize(
    ("settings_payload", "code"),
    [
        ({ENABLE_PUSH: 1}, PROTOCOL_ERROR),  # 6.5.2: a client treats ENABLE_PUSH = 1 as an error
        ({ENABLE_PUSH: 2}, PROTOCOL_ERROR),
        ({INITIAL_WINDOW_SIZE: 2**31}, FLOW_CONTROL_ERROR),
        ({MAX_FRAME_SIZE: 16383}, PROTOCOL_ERROR),
        ({MAX_FRAME_SIZE: 2**24}, PROTOCOL_ERROR),
    ],
)
async def test_settings_values_are_validated(client, settings_payload: dict[int, int], code: int) -> None:
    c = client()
    c.transport.take()
    c.server_sends(settings_frame(settings_payload))
    assert c.conn.closed and c.goaway_code() == code
    assert isinstance(c.batch.outcomes[0], OSError)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (frame(SETTINGS, ACK, 0, b"\0" * 6), FRAME_SIZE_ERROR),  # an ACK carries no payload
        (frame(SETTINGS, 0, 1), PROTOCOL_ERROR),  # SETTINGS on a stream
        (frame(SETTINGS, 0, 0, b"\0" * 5), FRAME_SIZE_ERROR),
        (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),  # DATA on stream 0
    ],
)
async def test_misframed_control_frames_end_the_connection(client, raw: bytes, code: int) -> None:
    c = client()
    c.transport.take()
    c.server_sends(raw)
    assert c.conn.closed and c.goaway_code() == code


@pytest.mark.parametrize("stream_id", [3, 2, 101])  # ours are odd and we opened only 1
async def test_headers_or_data_on_an_idle_stream_is_a_protocol_error(client, stream_id: int) -> None:
    for kind in ("headers", "data"):
        c = client()
        c.transport.take()
        raw = c.headers(stream_id) if kind == "headers" else frame(DATA, END_STREAM, stream_id, b"x")
        c.server_sends(raw)
        assert c.conn.closed and c.goaway_code() == PROTOCOL_ERROR, kind


async def test_data_past_the_connection_window_is_a_flow_control_error(client) -> None:
    """5.2, 6.9: the peer may not send more than the window we gave it."""
    c = client()
    c.server_sends(c.headers(1, flags=END_HEADERS))
    c.transport.take()
    chunk = frame(DATA, 0, 1, b"x" * 16384)
    c.conn.recv_window = 3 * 16384  # as if most of the window had been used
    c.server_sends(chunk, chunk, chunk, chunk)
    assert c.conn.closed and c.goaway_code() == FLOW_CONTROL_ERROR


async def test_a_body_past_the_stream_window_resets_the_stream(client) -> None:
    from gateway.transport.http2 import MAX_BODY_BYTES

    c = client()
    c.server_sends(c.headers(1, flags=END_HEADERS))
    for _ in range(MAX_BODY_BYTES // 16384 + 1):
        c.server_sends(frame(DATA, 0, 1, b"x" * 16384))
    assert not c.conn.closed  # a stream error, not the connection's
    assert isinstance(c.batch.outcomes[0], OSError) and "window" in str(c.batch.outcomes[0])


async def test_continuation_frames_are_bounded_per_header_block(client) -> None:
    c = client()
    c.transport.take()
    block = c.encoder.encode([(b":status", b"200")])
    c.server_sends(frame(HEADERS, 0, 1, block[:1]))
    for _ in range(MAX_CONTINUATIONS + 1):
        c.server_sends(frame(CONTINUATION, 0, 1, b""))
    assert c.conn.closed and c.goaway_code() == ENHANCE_YOUR_CALM


async def test_a_connection_out_of_stream_ids_is_retired_and_replaced(client) -> None:
    """5.1.1: stream ids cannot be reused. The connection that used its last one drains
    and closes; it no longer counts, so another opens even at max_connections."""
    c = client()
    c.pool.max_connections = 1
    conn = c.conn
    conn.next_stream_id = MAX_STREAM_ID  # the next request takes the last id
    conn.streams.clear()
    last = Batch(c.pool, [([(b":method", b"GET"), (b":path", b"/")], b"")], c.pool.loop.time() + 60)
    last.pump()
    assert conn not in c.pool.connections and conn in c.pool.draining and not conn.available()
    assert c.pool.connection() is None and c.pool.connecting is not None  # another is opening
    c.pool.connecting.cancel()
    c.server_sends(frame(HEADERS, END_STREAM | END_HEADERS, MAX_STREAM_ID, c.encoder.encode([(b":status", b"204")])))
    assert last.outcomes[0].status == 204  # type: ignore[union-attr]
    assert conn.closed and conn not in c.pool.draining


async def test_a_full_write_buffer_stops_new_streams_until_it_drains(client) -> None:
    c = client()
    c.server_sends(c.headers(1))
    assert c.conn.available()
    c.conn.pause_writing()
    assert (not c.conn.available() and c.pool.connection() is None) or c.pool.connecting is not None
    c.conn.resume_writing()
    assert c.conn.available()


# -- the fuzzer: any server bytes, in any pieces ------------------------------------------------
frames = st.one_of(
    st.builds(
        lambda kind, flags, stream, payload: frame(kind, flags, stream, payload),
        st.integers(0, 12),
        st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0xFF]),
        st.sampled_from([0, 1, 2, 3, 5, MAX_STREAM_ID]),
        st.binary(max_size=64),
    ),
    st.builds(lambda s: settings_frame(s), st.dictionaries(st.integers(0, 8), st.integers(0, 2**32 - 1), max_size=3)),
    st.binary(max_size=30),  # not even a frame
)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames, max_size=10), st.integers(1, 40), st.booleans())
def test_any_server_bytes_end_in_an_outcome_never_an_exception(sequence: list[bytes], cut: int, good: bool) -> None:
    """Whatever the server sends, however it is cut: `data_received` never raises, and the
    request ends with a response or an error (the connection open, or closed with
    GOAWAY), never left without an outcome once the connection has ended."""

    async def scenario() -> None:
        pool = Http2Pool("127.0.0.1", 1)
        c = Client(pool)
        wire = b"".join(sequence) + (c.headers(1) if good else b"")
        for start in range(0, len(wire), cut):
            c.conn.data_received(wire[start : start + cut])  # must not raise
        outcome = c.batch.outcomes[0]
        if c.conn.closed:
            assert outcome is not None
        assert outcome is None or isinstance(outcome, (Response, OSError))
        await pool.aclose()
        c.conn.connection_lost(None)  # what the socket's close brings
        assert c.batch.outcomes[0] is not None

    asyncio.run(scenario())
