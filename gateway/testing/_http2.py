"""The server side of `gateway.transport.http2`'s connection, for fakes that speak HTTP/2.

A fake is where a client's mistakes should show: each request's header block is checked as
RFC 9113 8.2-8.3 asks of a server (pseudo-headers first and known, names in lower case, no
connection-specific headers, values without CR, LF or NUL), and a bad one is refused with
RST_STREAM (PROTOCOL_ERROR). The HPACK decoder is the client's own, which any encoder's
blocks go through: the tests also send through h2, an independent implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar

from gateway.transport.http2 import (
    INITIAL_WINDOW_SIZE,
    MAX_BODY_BYTES,
    MAX_CONCURRENT_STREAMS,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Connection,
    ProtocolError,
    Stream,
)

MAX_STREAMS = 1000  # as APNs advertises once a connection is up
_PSEUDO = {b":method", b":scheme", b":path", b":authority"}
_CONNECTION_SPECIFIC = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
_NAME = re.compile(rb"[a-z0-9!#$%&'*+\-.^_`|~]+")
_good_names: set[tuple[bytes, ...]] = set()  # lists of names already checked: a client sends the same few

Handler = Callable[["Http2ServerConnection", int, list[tuple[bytes, bytes]], bytes], None]


def request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What is wrong with a request's header list, if anything."""
    names = tuple([name for name, _ in headers])
    if names not in _good_names:
        problem = _names_problem(names)
        if problem is not None:
            return problem
        if len(_good_names) < 1000:
            _good_names.add(names)
    # The values in one string: a few scans in C instead of a loop over them in Python.
    values = [value for _, value in headers]
    joined = b"".join(values)
    if b"\r" in joined or b"\n" in joined or b"\0" in joined or [v.strip(b" \t") for v in values] != values:
        return "a header value with CR, LF, NUL or surrounding whitespace"
    if b"te" in names and dict(headers)[b"te"] != b"trailers":
        return "te other than trailers"
    return None


def _names_problem(names: tuple[bytes, ...]) -> str | None:
    seen: set[bytes] = set()
    regular = False
    for name in names:
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in seen:
                return f"pseudo-header {name!r} unknown, repeated or after a regular header"
            seen.add(name)
        else:
            regular = True
            if not _NAME.fullmatch(name) or name in _CONNECTION_SPECIFIC:
                return f"header name {name!r} not allowed"
    if not {b":method", b":scheme", b":path"} <= seen:
        return "a request without :method, :scheme or :path"
    return None


class Http2ServerConnection(Connection):
    """One client connection; `handler(connection, stream_id, headers, body)` gets each
    complete request and answers it, now or later, through `respond`."""

    client_side = False
    local_settings: ClassVar[dict[int, int]] = {
        MAX_CONCURRENT_STREAMS: MAX_STREAMS,
        INITIAL_WINDOW_SIZE: MAX_BODY_BYTES,
    }

    def __init__(self, handler: Handler, volatile: tuple[bytes, ...] = ()) -> None:
        super().__init__(volatile)
        self.handler = handler
        self.last_stream_id = 0
        self.reading = False
        self.rejected: list[str] = []  # why requests were refused (a client's bugs, for tests)

    def headers_received(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
                raise ProtocolError(f"HEADERS on stream {stream_id}: not a new client stream")
            self.last_stream_id = stream_id
            if len(self.streams) >= MAX_STREAMS:
                self.reset(stream_id, REFUSED_STREAM)
                return
            problem = request_problem(headers)
            if problem is not None:
                self.rejected.append(problem)
                self.reset(stream_id, PROTOCOL_ERROR)
                return
            stream = self.streams[stream_id] = Stream(stream_id, self.peer_initial_window)
            stream.headers = headers
        if end_stream:  # (else: the body follows, or these were trailers)
            self.stream_ended(stream_id, stream)

    def stream_ended(self, stream_id: int, stream: Stream) -> None:
        self.handler(self, stream_id, stream.headers or [], bytes(stream.body))

    def respond(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes | None) -> None:
        """Answer a request. Answers made while reading go out in one write at the end of
        the read (in the APNs benchmark: 9,800-10,300 msg/s against 8,300-8,500 with a write
        per answer); a late one goes at once."""
        stream = self.streams.get(stream_id)
        if stream is None or self.closed:
            return  # the client reset it, or went away
        self.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.send_data(stream_id, stream, body)
        if stream_id not in self.blocked:
            del self.streams[stream_id]
        if not self.reading:
            self.flush()  # else data_received writes once, at the end of what it read

    def data_received(self, data: bytes) -> None:
        self.reading = True
        try:
            super().data_received(data)
        finally:
            self.reading = False

    def data_sent(self, stream_id: int, stream: Stream) -> None:
        self.streams.pop(stream_id, None)


class MemoryTransport:
    """A transport that keeps what is written, for the other side to `take`: two
    connections joined in memory, no sockets (tests, `benchmarks/http2.py`)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data
