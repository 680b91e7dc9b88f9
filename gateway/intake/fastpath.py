"""Plain `POST /v1/jobs` requests answered without aiohttp's server.

For a job of one recipient, aiohttp's server (request and response objects, its handler
loop) was ~23% of the event loop's time; this path takes ~19% off the job's CPU
(benchmarks/README.md). Here a connection starts on a protocol of our own that takes
plain job posts only:

    POST /v1/jobs HTTP/1.1            (or /v1/jobs?wait=2s)
    Host, Content-Length within the limit, Authorization: Bearer <a known key>,
    other fields of visible ASCII, none repeated; no Transfer-Encoding or Upgrade, no
    Expect but 100-continue

and answers them through the same code as the aiohttp handler (`api.submit_job`). The
first request that is anything else, from its first byte, goes to aiohttp's server (behind
the header clock of guard.py) with every later byte of the connection: the hand-off is at
a request boundary, so no byte is parsed by both, and responses keep the requests' order
(a request is read only once the one before it is answered). The accepted forms are a
strict subset of RFC 9112, held to h11 by a differential test (tests/intake/test_fastpath.py).

Timeouts as aiohttp's path has them: a head must arrive within `server.header_timeout`, a
body within `server.body_timeout` after its head (else 408), an idle connection is closed
after 75 s (aiohttp's keep-alive default).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

import msgspec

from gateway.app import Gateway
from gateway.config import ApiKey, seconds
from gateway.intake import api
from gateway.intake.service import Intake
from gateway.store import StoreUnavailable

PREFIX = b"POST /v1/jobs"
MAX_HEAD = 8192  # bytes up to the blank line; a longer head is aiohttp's to judge
MAX_FIELDS = 64
KEEPALIVE = 75.0  # aiohttp's keepalive_timeout default
_PLAIN_LINE = b"POST /v1/jobs HTTP/1.1"
_WAIT_LINE = re.compile(rb"POST /v1/jobs\?wait=(" + api.WAIT_PATTERN.encode() + rb") HTTP/1\.1")
# RFC 9110: a field name is a token; values here are visible ASCII with inner spaces and tabs.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_IN_HEAD = bytes(range(0x21, 0x7F)) + b" \t\r\n"  # every byte a plain head may hold
_NOT_PLAIN = (b"transfer-encoding", b"upgrade")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_encode = msgspec.json.Encoder().encode


class Head(NamedTuple):
    end: int  # where the body starts
    length: int  # Content-Length
    wait: str | None  # the ?wait= duration
    token: str  # the bearer token
    idempotency_key: str | None
    close: bool  # Connection: close
    expect: bool  # Expect: 100-continue (curl sends it with bodies over 1 KiB)


NEED_MORE = "need more"  # the head so far could still be a plain request


def parse_head(buf: bytes | bytearray, max_body: int) -> Head | str | None:
    """The head at the start of `buf` if it is a plain job post, NEED_MORE while it could
    still become one, else None (the request is aiohttp's)."""
    if len(buf) < len(PREFIX):
        return NEED_MORE if PREFIX.startswith(buf) else None
    if not buf.startswith(PREFIX):
        return None
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return NEED_MORE if len(buf) < MAX_HEAD else None
    block = bytes(buf[:end])
    crlf = block.count(b"\r\n")
    if block.translate(None, _IN_HEAD) or block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        return None  # a byte outside visible ASCII, or a CR or LF on its own
    lines = block.split(b"\r\n")
    if lines[0] == _PLAIN_LINE:
        wait = None
    elif (line := _WAIT_LINE.fullmatch(lines[0])) is not None:
        wait = line[1].decode()
    else:
        return None
    if len(lines) > MAX_FIELDS + 1:
        return None
    fields: dict[bytes, bytes] = {}
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):
            return None  # no colon, or a name that is not a token (obs-fold, spaces)
        name = name.lower()
        if name in fields or name in _NOT_PLAIN:
            return None
        fields[name] = value.strip(b" \t")
    length, auth = fields.get(b"content-length", b""), fields.get(b"authorization", b"")
    key = fields.get(b"idempotency-key")
    if b"host" not in fields or not (0 < len(length) <= 10 and length.isdigit()) or int(length) > max_body:
        return None
    scheme, _, token = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not token or b" " in token or b"\t" in token:
        return None
    if key is not None and (not key or b" " in key or b"\t" in key):
        return None
    connection = fields.get(b"connection")
    options = {t.strip() for t in connection.lower().split(b",")} if connection is not None else ()
    expect = fields.get(b"expect")
    if b"upgrade" in options or (expect is not None and expect.lower() != b"100-continue"):
        return None  # aiohttp answers 417 to any other expectation
    idempotency_key = key.decode() if key else None
    return Head(end + 4, int(length), wait, token.decode(), idempotency_key, b"close" in options, expect is not None)


class _Date:
    """The Date field, formatted once a second."""

    def __init__(self) -> None:
        self.second, self.text = -1, ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, formatdate(now, usegmt=True)
        return self.text


_date = _Date()


def response(status: int, body: object, headers: dict[str, str] | None, close: bool) -> bytes:
    payload = body if isinstance(body, bytes) else _encode(body)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(payload)}", f"Date: {_date()}"]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class FastIntake:
    """What the plain-request path needs of the gateway, shared by its connections."""

    def __init__(self, gateway: Gateway, intake: Intake, keys: list[ApiKey]):
        self.gw, self.intake, self.keys = gateway, intake, keys
        self.max_body = gateway.config.limits.max_body_bytes
        self.header_timeout = seconds(gateway.config.server.header_timeout)
        self.body_timeout = seconds(gateway.config.server.body_timeout)
        self.keepalive = KEEPALIVE
        self.connections: set[PlainProtocol] = set()
        self.stopping = False

    async def answer(self, head: Head, key: ApiKey, body: bytes) -> api.Answer:
        try:
            wait = api.wait_seconds(self.gw, head.wait) if head.wait else 0.0
            return await api.submit_job(self.gw, self.intake, body, key.tenant, head.idempotency_key, wait)
        except StoreUnavailable as exc:  # the caller retries, never a 500
            return api.store_unavailable(self.gw, exc)
        except Exception:
            return api.internal_error("POST", "/v1/jobs")

    def stop(self) -> None:
        """No more requests: idle connections close now, the others once answered."""
        self.stopping = True
        for connection in list(self.connections):
            connection.stop()


class PlainProtocol(asyncio.Protocol):
    """A connection while it sends plain job posts; `hand_off()` gives it to aiohttp."""

    def __init__(self, fast: FastIntake, aiohttp_protocol: Callable[[], asyncio.Protocol]):
        self.fast = fast
        self.aiohttp_protocol = aiohttp_protocol
        self.loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buf = bytearray()
        self.head: Head | None = None  # of the request whose body is still arriving
        self.key: ApiKey | None = None
        self.answering: asyncio.Task[None] | None = None
        self.since = self.loop.time()  # of the current wait: for a head, a body, or idle
        self.paused = False
        self.eof = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.fast.connections.add(self)
        self._timer = self.loop.call_later(self.fast.header_timeout / 2, self._check)

    def data_received(self, data: bytes) -> None:
        if not self.buf and self.head is None and self.answering is None:
            self.since = self.loop.time()  # a head starts: its clock
        self.buf += data
        if self.answering is None:
            self._next()
        elif len(self.buf) > self.fast.max_body + MAX_HEAD and not self.paused:
            self.transport.pause_reading()  # pipelined requests pile up: read on once answered
            self.paused = True

    def eof_received(self) -> bool:
        self.eof = True
        if self.answering is None:
            self._close()
        return True  # the answer under way still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self.fast.connections.discard(self)
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()

    # -- requests -------------------------------------------------------------------------
    def _next(self) -> None:
        """Take the next request in the buffer: answer it, wait for more of it, or hand the
        connection to aiohttp."""
        if self.transport is None or not self.buf:
            return
        if self.head is None:
            head = parse_head(self.buf, self.fast.max_body)
            if head == NEED_MORE:
                return
            if not isinstance(head, Head) or (key := api.key_for(self.fast.keys, head.token)) is None:
                self.hand_off()
                return
            self.head, self.key, self.since = head, key, self.loop.time()
            if head.expect and len(self.buf) < head.end + head.length:
                self.transport.write(CONTINUE)
        head, key = self.head, self.key
        assert key is not None
        end = head.end + head.length
        if len(self.buf) < end:
            return  # the body is on its way (the timer watches it)
        body = bytes(self.buf[head.end : end])
        del self.buf[:end]
        self.head = self.key = None
        self.answering = self.loop.create_task(self._answer(head, key, body))

    async def _answer(self, head: Head, key: ApiKey, body: bytes) -> None:
        answer = await self.fast.answer(head, key, body)
        self.answering = None
        if self.transport is None:
            return  # the client left; its job, if accepted, is stored all the same
        close = head.close or self.eof or self.fast.stopping
        self.transport.write(response(*answer, close=close))
        if close:
            self._close()
            return
        self.since = self.loop.time()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._next()

    def hand_off(self) -> None:
        """From here on the connection is aiohttp's, starting with what is in the buffer."""
        transport, data = self.transport, bytes(self.buf)
        self.buf.clear()
        self.connection_lost(None)  # this protocol's part ends (the timer, the registry)
        protocol = self.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.paused:
            transport.resume_reading()
        if data:
            protocol.data_received(data)
        if self.eof:
            protocol.eof_received()

    def stop(self) -> None:
        if self.answering is None:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- the clock --------------------------------------------------------------------------
    def _check(self) -> None:
        if self.transport is None:
            return
        waited = self.loop.time() - self.since
        if self.answering is None:
            if self.head is not None and waited > self.fast.body_timeout:
                self.fast.gw.metrics.jobs_rejected.inc("408")
                self.transport.write(response(*api.BODY_TIMEOUT, close=True))
                self._close()
                return
            if self.head is None and (waited > self.fast.header_timeout if self.buf else waited > self.fast.keepalive):
                self._close()  # a head that does not come, or nothing at all
                return
        self._timer = self.loop.call_later(self.fast.header_timeout / 2, self._check)
