"""A lean HTTP/2 (RFC 9113) connection: the APNs channel's client, and the base of its fake.

The h2 library costs ~100 us of CPU per APNs request in a client and ~125 us in a server
on the development machine, with no sockets or TLS: 2.25 cores at the 10,000 requests/s
one APNs provider is expected to reach on a 2-core machine. This module does what a client
of one origin (and a small server) needs, at a sixth to a quarter of that
(`benchmarks/http2.py` measures both in one run): the frames, HPACK (`hpack.py`),
both sides of flow control, SETTINGS, PING, GOAWAY, RST_STREAM and CONTINUATION. Not
supported, as no channel needs them: server push (refused through SETTINGS_ENABLE_PUSH =
0), priorities (ignored), trailers (read and dropped), bodies over `MAX_BODY_BYTES`.

`Http2Pool` keeps connections to one origin, opens another only when the streams the
server allows are all in use, writes the requests started in one turn of the event loop
in one write, retries at once a request the server refused unprocessed (GOAWAY,
REFUSED_STREAM), and cuts requests at their deadline with RST_STREAM (CANCEL).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

from gateway.transport.deadlines import Deadlines
from gateway.transport.hpack import MAX_HEADER_LIST, CompressionError, HeaderDecoder, HeaderEncoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# SETTINGS parameters
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5
# Error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_FRAME = 16384  # the largest frame we accept (the default; we never raise it)
MAX_BODY_BYTES = 1024 * 1024  # per stream, in either direction: also our stream window
CONNECTION_WINDOW = 16 * 1024 * 1024  # what the peer may send us before we replenish
MAX_CONTINUATIONS = 32  # CONTINUATION frames in one header block, at most

_FRAME = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")


_CONNECTION_FRAMES = frozenset((SETTINGS, PING, GOAWAY))  # stream 0 only
_STREAM_FRAMES = frozenset((DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION, PUSH_PROMISE))  # never stream 0


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings.items()))


class Http2Error(OSError):
    """The connection failed or broke the protocol (a transient failure to a channel)."""


class ConnectionClosed(Http2Error):
    pass


class StreamReset(Http2Error):
    def __init__(self, code: int, detail: str = ""):
        super().__init__(f"stream reset by the peer (error code {code}){': ' + detail if detail else ''}")
        self.code = code


class Refused(StreamReset):
    """The server did not process the request (REFUSED_STREAM, or past a GOAWAY's last
    stream): it is safe to send again, on another connection."""


class ProtocolError(Http2Error):
    def __init__(self, detail: str, code: int = PROTOCOL_ERROR):
        super().__init__(detail)
        self.code = code


# -- The connection -----------------------------------------------------------------------
class Stream:
    __slots__ = ("batch", "body", "headers", "id", "index", "pending", "pending_end", "send_window")

    def __init__(self, stream_id: int, send_window: int):
        self.id = stream_id
        self.send_window = send_window
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.body = bytearray()
        self.pending = b""  # DATA waiting for flow-control window
        self.pending_end = False
        self.batch: Batch | None = None  # client side: whose request this is, and which
        self.index = 0


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Connection(asyncio.Protocol):
    """Frames in and out of one connection; `Http2ClientConnection` and the fakes' server
    connection add what their side does with a stream's headers and body."""

    client_side = True
    local_settings: ClassVar[dict[int, int]] = {ENABLE_PUSH: 0, INITIAL_WINDOW_SIZE: MAX_BODY_BYTES}

    def __init__(self, volatile: Iterable[bytes] = ()) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.encoder = HeaderEncoder(volatile)
        self.decoder = HeaderDecoder()
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}  # streams with DATA waiting for window
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = MAX_FRAME
        self.peer_max_streams = MAX_STREAM_ID
        self.received_unacked = 0
        self.recv_window = CONNECTION_WINDOW  # what the peer may still send on the connection
        self.continuing: tuple[int, int, bytearray] | None = None  # stream, flags, header block so far
        self.continuations = 0
        self.goaway: int | None = None  # the last stream id the peer said it will process
        self.closed = False
        self.paused = False  # the transport's write buffer is full: start nothing new
        self.awaiting_preface = not self.client_side

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.client_side:
            self.out.append(PREFACE)
        self.out.append(settings_frame(self.local_settings))
        self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.lost(ConnectionClosed(f"connection lost: {exc or 'closed by peer'}"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.awaiting_preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self.abort(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self.abort(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            del buffer[: len(PREFACE)]
            self.awaiting_preface = False
        pos, size = 0, len(buffer)
        try:
            while size - pos >= 9 and not self.closed:
                high, low, kind, flags, stream_id = _FRAME.unpack_from(buffer, pos)
                length = (high << 16) | low
                if length > MAX_FRAME:
                    raise ProtocolError(f"a frame of {length} bytes", FRAME_SIZE_ERROR)
                end = pos + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[pos + 9 : end])
                pos = end
                self.frame_received(kind, flags, stream_id & MAX_STREAM_ID, payload)
        except ProtocolError as exc:
            self.abort(exc.code, str(exc))
            return
        del buffer[:pos]
        self.flush()

    # -- frames in ---------------------------------------------------------------------
    def frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and (kind != CONTINUATION or stream_id != self.continuing[0]):
            raise ProtocolError("a header block was interrupted")
        if kind in _CONNECTION_FRAMES and stream_id:
            raise ProtocolError(f"a frame of type {kind} on stream {stream_id}")
        if kind in _STREAM_FRAMES and not stream_id:
            raise ProtocolError(f"a frame of type {kind} on stream 0")
        if kind == HEADERS:
            if self.idle(stream_id):
                raise ProtocolError(f"HEADERS on stream {stream_id}, which is idle")
            if flags & PADDED:
                payload = self._unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload)
            else:
                self.continuing = (stream_id, flags, bytearray(payload))
                self.continuations = 0
        elif kind == DATA:
            self._data(stream_id, flags, payload)
        elif kind == CONTINUATION:
            if self.continuing is None:
                raise ProtocolError("CONTINUATION without HEADERS")
            self.continuing[2].extend(payload)
            self.continuations += 1
            if len(self.continuing[2]) > MAX_HEADER_LIST:
                raise ProtocolError("header block too large", COMPRESSION_ERROR)
            if self.continuations > MAX_CONTINUATIONS:
                raise ProtocolError("too many CONTINUATION frames in one header block", ENHANCE_YOUR_CALM)
            if flags & END_HEADERS:
                stream_id, first_flags, block = self.continuing
                self.continuing = None
                self._headers(stream_id, first_flags, bytes(block))
        elif kind == SETTINGS:
            if flags & ACK:
                if payload:
                    raise ProtocolError("a SETTINGS acknowledgement with a payload", FRAME_SIZE_ERROR)
            else:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8:
                raise ProtocolError("PING of the wrong size", FRAME_SIZE_ERROR)
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise ProtocolError("RST_STREAM of the wrong size", FRAME_SIZE_ERROR)
            if self.idle(stream_id):
                raise ProtocolError(f"RST_STREAM on stream {stream_id}, which is idle")
            stream = self.streams.pop(stream_id, None)
            self.blocked.pop(stream_id, None)
            if stream is not None:
                self.stream_reset(stream_id, stream, _U32.unpack(payload)[0])
        elif kind == GOAWAY:
            if len(payload) < 8:
                raise ProtocolError("GOAWAY too short", FRAME_SIZE_ERROR)
            last, code = struct.unpack_from(">LL", payload)
            self.goaway = last & MAX_STREAM_ID
            self.goaway_received(self.goaway, code, payload[8:])
        elif kind == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE although SETTINGS_ENABLE_PUSH is 0")
        elif kind == PRIORITY and len(payload) != 5:
            stream = self.streams.get(stream_id)  # a stream error (RFC 9113 6.3)
            self.reset(stream_id, FRAME_SIZE_ERROR)
            if stream is not None:
                self.stream_reset(stream_id, stream, FRAME_SIZE_ERROR, "a PRIORITY frame of the wrong size")
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)

    @staticmethod
    def _unpad(payload: bytes) -> bytes:
        if not payload or payload[0] >= len(payload):
            raise ProtocolError("padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)  # always: the HPACK state is the connection's
        except CompressionError as exc:
            raise ProtocolError(str(exc), COMPRESSION_ERROR) from None
        self.headers_received(stream_id, headers, bool(flags & END_STREAM))

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.idle(stream_id):
            raise ProtocolError(f"DATA on stream {stream_id}, which is idle")
        # The whole frame counts against the window, padding included (RFC 9113 6.9.1); a
        # peer that sends past what we allowed breaks the protocol.
        self.recv_window -= len(payload)
        if self.recv_window < 0:
            raise ProtocolError("DATA past the connection's flow-control window", FLOW_CONTROL_ERROR)
        self.received_unacked += len(payload)
        if self.received_unacked >= CONNECTION_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received_unacked)))
            self.recv_window += self.received_unacked
            self.received_unacked = 0
        if flags & PADDED:
            payload = self._unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we reset or finished: its late frames are dropped
        stream.body += payload
        if len(stream.body) > MAX_BODY_BYTES:  # past the stream window we gave (never replenished)
            self.reset(stream_id, FLOW_CONTROL_ERROR)
            self.stream_reset(stream_id, stream, FLOW_CONTROL_ERROR, "DATA past the stream's window")
            return
        if flags & END_STREAM:
            self.stream_ended(stream_id, stream)

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError("SETTINGS of the wrong size", FRAME_SIZE_ERROR)
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == ENABLE_PUSH:
                # RFC 9113 6.5.2: 0 or 1, and a server may only say 0
                if value > 1 or (value and self.client_side):
                    raise ProtocolError(f"SETTINGS_ENABLE_PUSH of {value}")
            elif key == HEADER_TABLE_SIZE:
                self.encoder.set_max_size(value)
            elif key == MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("initial window too large", FLOW_CONTROL_ERROR)
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError("a stream window above 2^31-1", FLOW_CONTROL_ERROR)
            elif key == MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolError("SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
        self.out.append(frame(SETTINGS, ACK, 0))
        self._unblock()
        self.settings_received()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError("WINDOW_UPDATE of the wrong size", FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ProtocolError("WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError("connection window above 2^31-1", FLOW_CONTROL_ERROR)
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if not increment or stream.send_window > MAX_WINDOW:
                self.reset(stream_id, FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
                self.stream_reset(stream_id, stream, FLOW_CONTROL_ERROR, "bad window update")
                return
        self._unblock()

    # -- frames out ----------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool) -> None:
        block = self.encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        if len(block) <= self.peer_max_frame:
            self.out.append(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        step = self.peer_max_frame
        self.out.append(frame(HEADERS, flags, stream_id, block[:step]))
        for start in range(step, len(block), step):
            last = start + step >= len(block)
            self.out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start : start + step]))

    def send_data(self, stream_id: int, stream: Stream, data: bytes, end_stream: bool = True) -> None:
        size = len(data)
        if 0 < size <= self.peer_max_frame and size <= self.send_window and size <= stream.send_window:
            self.send_window -= size  # the usual case: one frame, within both windows
            stream.send_window -= size
            self.out.append(frame(DATA, END_STREAM if end_stream else 0, stream_id, data))
            return
        stream.pending, stream.pending_end = data, end_stream
        if not data:
            self.out.append(frame(DATA, END_STREAM if end_stream else 0, stream_id))
            stream.pending_end = False
            return
        if not self._push(stream_id, stream):
            self.blocked[stream_id] = stream

    def _push(self, stream_id: int, stream: Stream) -> bool:
        """Send what flow control allows of the stream's pending DATA; True when all sent."""
        data = stream.pending
        while data:
            size = min(len(data), self.send_window, stream.send_window, self.peer_max_frame)
            if size <= 0:
                stream.pending = data
                return False
            chunk, data = data[:size], data[size:]
            self.send_window -= size
            stream.send_window -= size
            self.out.append(frame(DATA, END_STREAM if not data and stream.pending_end else 0, stream_id, chunk))
        stream.pending = b""
        return True

    def _unblock(self) -> None:
        for stream_id, stream in list(self.blocked.items()):
            if self.send_window <= 0:
                return
            if self._push(stream_id, stream):
                del self.blocked[stream_id]
                self.data_sent(stream_id, stream)

    def reset(self, stream_id: int, code: int) -> None:
        self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        self.out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def abort(self, code: int, detail: str) -> None:
        """A connection error: GOAWAY, then close (RFC 9113 5.4.1)."""
        last = max((sid for sid in self.streams if sid % 2 != self.client_side), default=0)
        self.out.append(frame(GOAWAY, 0, 0, struct.pack(">LL", last, code) + detail.encode()[:256]))
        self.flush()
        self.close()
        self.lost(ProtocolError(detail, code))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- write backpressure ----------------------------------------------------------
    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.writable()

    # -- what each side does -----------------------------------------------------------
    def idle(self, stream_id: int) -> bool:
        """Is this stream idle: never opened by either side (RFC 9113 5.1)? Frames other
        than PRIORITY on an idle stream break the protocol."""
        return False

    def writable(self) -> None:
        """The transport drained its write buffer: more may be written."""

    def settings_received(self) -> None:
        pass

    def headers_received(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        raise NotImplementedError

    def stream_ended(self, stream_id: int, stream: Stream) -> None:
        raise NotImplementedError

    def stream_reset(self, stream_id: int, stream: Stream, code: int, detail: str = "") -> None:
        pass

    def goaway_received(self, last_stream_id: int, code: int, debug: bytes) -> None:
        pass

    def data_sent(self, stream_id: int, stream: Stream) -> None:
        """All of a stream's DATA went out, after waiting for flow-control window."""

    def lost(self, error: Exception) -> None:
        pass


class Http2ClientConnection(Connection):
    """Requests on one connection; each stream's outcome goes to its batch (`Batch.settle`)."""

    def __init__(self, pool: Http2Pool) -> None:
        super().__init__(pool.volatile)
        self.pool = pool
        self.next_stream_id = 1
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.flush_soon = False

    def available(self) -> bool:
        """Can this connection take one more request now?"""
        return (
            not self.closed
            and not self.paused
            and self.goaway is None
            and self.ready.done()
            and len(self.streams) < self.peer_max_streams
            and self.next_stream_id <= MAX_STREAM_ID
        )

    def idle(self, stream_id: int) -> bool:
        # ours are odd; an even one would be a server push, which we disabled
        return stream_id % 2 == 0 or stream_id >= self.next_stream_id

    def close(self) -> None:
        super().close()
        self.pool.forget(self)

    def writable(self) -> None:
        self.pool.wake()

    def start(self, headers: Sequence[tuple[bytes, bytes]], body: bytes, batch: Batch, index: int) -> Stream:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        if self.next_stream_id > MAX_STREAM_ID:  # its last stream: drain it, and open another
            self.pool.retire(self)
        stream = self.streams[stream_id] = Stream(stream_id, self.peer_initial_window)
        stream.batch, stream.index = batch, index
        self.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.send_data(stream_id, stream, body)
        if not self.flush_soon:  # one write for the requests started in this turn of the loop
            self.flush_soon = True
            self.loop.call_soon(self._flush_soon)
        return stream

    def _flush_soon(self) -> None:
        self.flush_soon = False
        self.flush()

    def cancel(self, stream: Stream) -> None:
        """Its batch gave up on it: free the stream for another request."""
        if self.streams.get(stream.id) is stream:
            self.reset(stream.id, CANCEL)
            self.flush()
            self.pool.wake()

    def settle(self, stream: Stream, outcome: Response | Exception) -> None:
        if stream.batch is not None:
            stream.batch.settle(stream, outcome)

    def settings_received(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        # Later: a SETTINGS frame read with this one may lower the stream limit again.
        self.loop.call_soon(self.pool.wake)

    def headers_received(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id % 2 == 0 or stream_id >= self.next_stream_id:
                raise ProtocolError(f"HEADERS on stream {stream_id}, which we never opened")
            return  # a stream we gave up on
        if stream.headers is None:
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if not status.isdigit():
                self.reset(stream_id, PROTOCOL_ERROR)
                self.stream_reset(stream_id, stream, PROTOCOL_ERROR, "a response without :status")
                return
            if status[0] == 0x31 and not end_stream:  # 1xx: an interim response, the final one follows
                return
            stream.headers = headers
        # else: trailers, dropped
        if end_stream:
            self.stream_ended(stream_id, stream)

    def stream_ended(self, stream_id: int, stream: Stream) -> None:
        del self.streams[stream_id]
        self.blocked.pop(stream_id, None)  # the server answered before reading all of the body
        headers = stream.headers
        if headers is None:
            self.settle(stream, ProtocolError("a stream ended without a response"))
        else:
            self.settle(stream, Response(int(headers[0][1]), headers, bytes(stream.body)))
        if (self.goaway is not None or self.next_stream_id > MAX_STREAM_ID) and not self.streams:
            self.close()  # drained after the server's GOAWAY, or its last stream id
        self.pool.wake()

    def stream_reset(self, stream_id: int, stream: Stream, code: int, detail: str = "") -> None:
        self.settle(stream, (Refused if code == REFUSED_STREAM else StreamReset)(code, detail))
        self.pool.wake()

    def goaway_received(self, last_stream_id: int, code: int, debug: bytes) -> None:
        # Streams above the last one were not processed: they may go again elsewhere.
        detail = f"GOAWAY (error code {code}){': ' + debug.decode('utf-8', 'replace') if debug else ''}"
        self.pool.retire(self)  # no new streams here: it drains, uncounted, and another may open
        self.pool.wake()
        for stream_id in [sid for sid in self.streams if sid > last_stream_id]:
            stream = self.streams.pop(stream_id)
            self.blocked.pop(stream_id, None)
            self.settle(stream, Refused(REFUSED_STREAM, detail))
        if not self.streams:
            self.close()

    def lost(self, error: Exception) -> None:
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the pool reports it through the connect
        self.pool.forget(self)
        for stream in streams.values():
            self.settle(stream, error)


class Batch:
    """Requests sent together and awaited together, with no coroutine per request: each is
    started when a connection has a free stream, and its stream's end settles it."""

    def __init__(
        self,
        pool: Http2Pool,
        requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]],
        deadline: float,
        on_outcome: Callable[[int, Response | Exception], None] | None = None,
    ):
        self.pool = pool
        self.requests = requests
        self.deadline = deadline
        self.on_outcome = on_outcome  # told of each request's outcome as it settles
        self.outcomes: list[Response | Exception | None] = [None] * len(requests)
        self.queue = deque(range(len(requests)))
        self.left = len(requests)
        self.open: dict[Stream, Http2ClientConnection] = {}
        self.refusals: dict[int, int] = {}
        self.done = pool.loop.create_future()
        if not requests:
            self.done.set_result(None)

    def pump(self) -> None:
        """Start what the pool's connections have streams for; wait for the rest."""
        pool = self.pool
        if self.queue and pool.loop.time() >= self.deadline:
            self.fail_queued(TimeoutError("no free stream in time"))
        while self.queue:
            connection = pool.connection()
            if connection is None:
                if pool.closed:
                    self.fail_queued(ConnectionClosed("the pool is closed"))
                elif self not in pool.starved:
                    pool.starved.append(self)
                    pool.deadlines.watch(self, self.deadline)  # its queued requests end then
                return
            index = self.queue.popleft()
            headers, body = self.requests[index]
            stream = connection.start(headers, body, self, index)
            self.open[stream] = connection
            pool.deadlines.watch(stream, self.deadline)

    def settle(self, stream: Stream, outcome: Response | Exception) -> None:
        if self.open.pop(stream, None) is None:
            return  # settled already (a deadline, then the stream's end)
        self.pool.deadlines.forget(stream)
        index = stream.index
        if isinstance(outcome, Refused) and self.refusals.get(index, 0) < 2:
            self.refusals[index] = self.refusals.get(index, 0) + 1
            self.queue.append(index)  # not processed: again, on whatever connection has room
            self.pump()
            return
        self._set(index, outcome)

    def _set(self, index: int, outcome: Response | Exception) -> None:
        self.outcomes[index] = outcome
        self.left -= 1
        if self.on_outcome is not None:
            self.on_outcome(index, outcome)
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def fail_queued(self, error: Exception) -> None:
        while self.queue:
            self._set(self.queue.popleft(), error)

    def expire(self) -> None:
        """Past the deadline: whatever has not ended fails with TimeoutError."""
        self.fail_queued(TimeoutError("no free stream in time"))
        for stream, connection in list(self.open.items()):
            self.settle(stream, TimeoutError("no response in time"))
            connection.cancel(stream)

    def abandon(self) -> None:
        """The caller went away: free its streams."""
        self.queue.clear()
        open_streams, self.open = self.open, {}
        for stream, connection in open_streams.items():
            self.pool.deadlines.forget(stream)
            connection.cancel(stream)


def tls_context(trusting: ssl_module.SSLContext | None = None) -> ssl_module.SSLContext:
    """A client context of our own offering only `h2` (the caller's is never changed): the
    system's CAs, or the CAs `trusting` was given (a private CA, a test's)."""
    context = ssl_module.create_default_context()
    if trusting is not None:
        cadata = trusting.get_ca_certs(binary_form=True)
        if cadata:
            context.load_verify_locations(cadata=b"".join(cadata))
        context.check_hostname = trusting.check_hostname
        context.verify_mode = trusting.verify_mode
    context.set_alpn_protocols(["h2"])
    return context


class Http2Pool:
    """HTTP/2 connections to one origin (`https://host:port`), shared by its requests."""

    def __init__(
        self,
        host: str,
        port: int = 443,
        ssl: ssl_module.SSLContext | None = None,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        volatile: Iterable[bytes] = (),
    ):
        self.host, self.port = host, port
        self.ssl = tls_context(ssl)
        self.authority = (host if port == 443 else f"{host}:{port}").encode()
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.volatile = frozenset(volatile)
        self.connections: list[Http2ClientConnection] = []
        self.draining: set[Http2ClientConnection] = set()  # retired: finishing their streams
        self.connecting: asyncio.Future[None] | None = None
        self.starved: list[Batch] = []  # batches waiting for a free stream
        self.loop = asyncio.get_running_loop()
        self.deadlines: Deadlines[Stream | Batch] = Deadlines(self._expired)
        self.closed = False

    async def request_all(
        self,
        requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]],
        timeout: float,
        on_outcome: Callable[[int, Response | Exception], None] | None = None,
    ) -> list[Response | Exception]:
        """Send every (headers, body) request (pseudo-headers first, names in lower case),
        as many at once as the server's streams allow, and wait at most `timeout` seconds
        for them all: the outcome of each is its Response, or the error that ended it
        (TimeoutError, Http2Error, OSError). `on_outcome(index, outcome)` is told of each
        as it settles, before the whole batch has."""
        batch = Batch(self, requests, self.loop.time() + timeout, on_outcome)
        batch.pump()
        # No timer of its own (uvloop's cost ~2% of a one-message job's loop time): the
        # sweeper cuts its streams at the deadline, and ends it if it is still waiting for
        # a stream then (watched while starved).
        try:
            await batch.done
        except BaseException:
            batch.abandon()
            raise
        finally:
            self.deadlines.forget(batch)
            if batch in self.starved:
                self.starved.remove(batch)
        return batch.outcomes  # type: ignore[return-value]  # every one settled

    async def request(self, headers: Sequence[tuple[bytes, bytes]], body: bytes, timeout: float) -> Response:
        """One request: its Response, or its error raised."""
        (outcome,) = await self.request_all([(headers, body)], timeout)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def connection(self) -> Http2ClientConnection | None:
        """A connection with a free stream, or None (and another opening, if allowed)."""
        for connection in self.connections:
            if connection.available():
                return connection
        if self.connecting is None and len(self.connections) < self.max_connections and not self.closed:
            self.connecting = asyncio.ensure_future(self._connect())  # one Task per connection opened
        return None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection: Http2ClientConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, connection = await loop.create_connection(
                    lambda: Http2ClientConnection(self), self.host, self.port, ssl=self.ssl, server_hostname=self.host
                )
                protocol = transport.get_extra_info("ssl_object").selected_alpn_protocol()
                if protocol != "h2":  # RFC 9113 3.2: HTTP/2 over TLS is negotiated with ALPN
                    raise Http2Error(f"the server did not negotiate HTTP/2 (ALPN: {protocol!r})")
                self.connections.append(connection)
                await connection.ready  # the server's SETTINGS: how many streams it takes
        except BaseException as exc:  # the requests waiting for it fail with its error
            if connection is not None:
                connection.close()
                if connection in self.connections:
                    self.connections.remove(connection)
            self.connecting = None
            error = exc if isinstance(exc, Exception) else ConnectionClosed("cancelled")
            starved, self.starved = self.starved, []
            for batch in starved:
                batch.fail_queued(error)
            return
        self.connecting = None
        self.wake()

    def wake(self) -> None:
        """Streams were freed or a connection opened: the starved batches may go on."""
        if self.starved:
            starved, self.starved = self.starved, []
            for batch in starved:
                batch.pump()

    def forget(self, connection: Http2ClientConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        self.draining.discard(connection)
        self.wake()  # they may open another

    def retire(self, connection: Http2ClientConnection) -> None:
        """No new streams on it (its stream ids ran out, or the server sent GOAWAY): it
        finishes what it has and closes; it no longer counts against `max_connections`."""
        if connection in self.connections:
            self.connections.remove(connection)
            self.draining.add(connection)

    @staticmethod
    def _expired(key: Stream | Batch) -> None:
        if isinstance(key, Batch):  # still waiting for a stream at its deadline
            key.expire()
            return
        stream = key
        batch = stream.batch
        connection = batch.open.get(stream) if batch else None
        if connection is not None:
            batch.settle(stream, TimeoutError("no response in time"))  # type: ignore[union-attr]
            connection.cancel(stream)

    async def aclose(self) -> None:
        self.closed = True
        self.deadlines.close()
        if self.connecting is not None:
            self.connecting.cancel()
        starved, self.starved = self.starved, []
        for batch in starved:
            batch.fail_queued(ConnectionClosed("the pool is closed"))
        for connection in [*self.connections, *self.draining]:
            connection.out.append(frame(GOAWAY, 0, 0, struct.pack(">LL", 0, NO_ERROR)))
            connection.flush()
            connection.close()
        self.connections.clear()
        self.draining.clear()
        await asyncio.sleep(0)
