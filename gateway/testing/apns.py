"""A local APNs provider API: HTTP/2 over TLS (`gateway.testing._http2` on an asyncio server).

It behaves as Apple's does towards a client: it offers `h2` through ALPN and accepts
clients that do not use ALPN, advertises 1,000 concurrent streams, echoes `apns-id` on
every response, answers success with `:status 200` and `end_stream` (no DATA frame), and
an error with its JSON body `{"reason": ...}` in one DATA frame (`timestamp` on 410).
Each request's provider token is verified: an ES256 JWT signed with the team's key
(`key_pem()` gives the .p8 to configure), `kid` = key id, `iss` = team id, `iat` within
an hour; `apns-topic` must be one of `topics`. Faults are scripted per device token:
`fault(token, attempt) -> ApnsFault | None`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.testing._http import FakeServer
from gateway.testing._http2 import Http2ServerConnection

_decode = msgspec.json.Decoder(dict).decode  # a payload is a JSON object (the client checks the size only)


@dataclass
class ApnsFault:
    status: int = 200  # 200 with delay/drop: answer normally, late or not at all
    reason: str = ""
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class ApnsNotification:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    claims: dict[str, Any]


@dataclass
class ApnsFake(FakeServer):
    tls_context: ssl.SSLContext
    topics: tuple[str, ...] = ("com.shop.app",)
    team_id: str = "TEAM123456"
    key_id: str = "KEY1234567"
    fault: Callable[[str, int], ApnsFault | None] | None = None
    received: list[ApnsNotification] = field(default_factory=list)
    # time.monotonic() of each first receipt, in the order of `received` (latency figures)
    arrivals: list[float] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    apns_ids: list[str] = field(default_factory=list)  # every request's apns-id, retries included
    rejected: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    # "gateway": the HTTP/2 server built on the gateway's own connection; "h2": the h2
    # library's, so our client is also tested against an implementation it shares nothing with
    engine: str = "gateway"
    _server: asyncio.AbstractServer | None = None

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._verified: dict[str, dict[str, Any]] = {}  # provider token -> its claims

    def key_pem(self) -> str:
        """The team's .p8 signing key, as Apple's developer portal hands it out."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def verify(self, headers: dict[str, str]) -> tuple[int, str] | dict[str, Any]:
        """Claims of a valid provider token, or (status, reason) as APNs would answer."""
        bearer = headers.get("authorization", "")
        if not bearer.lower().startswith("bearer "):
            return 403, "MissingProviderToken"
        token = bearer[7:]
        # A provider sends the same token for up to an hour: its signature is checked once
        # (an ES256 verification per request made this fake the largest CPU user in the
        # APNs benchmark), its age on every request.
        claims = self._verified.get(token)
        if claims is None:
            try:
                if jwt.get_unverified_header(token).get("kid") != self.key_id:
                    return 403, "InvalidProviderToken"
                claims = jwt.decode(
                    token, self._key.public_key(), algorithms=["ES256"], options={"require": ["iss", "iat"]}
                )
            except jwt.InvalidTokenError:
                return 403, "InvalidProviderToken"
            if claims["iss"] != self.team_id:
                return 403, "InvalidProviderToken"
            if len(self._verified) > 64:
                self._verified.clear()
            self._verified[token] = claims
        if time.time() - claims["iat"] > 3600:
            return 403, "ExpiredProviderToken"
        if headers.get("apns-topic") not in self.topics:
            return 400, "TopicDisallowed" if headers.get("apns-topic") else "MissingTopic"
        return claims

    def respond(self, proto: _Protocol, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        apns_id = headers.get("apns-id") or secrets.token_hex(16)
        self.apns_ids.append(apns_id)
        path = headers.get(":path", "")
        token = path.removeprefix("/3/device/")
        verdict = self.verify(headers)
        fault = None
        if not isinstance(verdict, tuple) and len(body) <= 4096:
            attempt = self.attempts[token] = self.attempts.get(token, 0) + 1
            fault = self.fault(token, attempt) if self.fault else None
        if fault is not None and fault.delay:  # only a late answer waits: a Task for it alone
            task = asyncio.ensure_future(self._late(proto, stream_id, headers, body, token, apns_id, verdict, fault))
            proto.tasks.add(task)
            task.add_done_callback(proto.tasks.discard)
            return
        self._answer(proto, stream_id, headers, body, token, apns_id, verdict, fault)

    async def _late(self, proto: _Protocol, stream_id: int, *args: Any) -> None:
        """`_answer(proto, stream_id, *args)` after the fault's delay (the fault is last)."""
        await asyncio.sleep(args[-1].delay)
        self._answer(proto, stream_id, *args)

    def _answer(
        self,
        proto: _Protocol,
        stream_id: int,
        headers: dict[str, str],
        body: bytes,
        token: str,
        apns_id: str,
        verdict: tuple[int, str] | dict[str, Any],
        fault: ApnsFault | None,
    ) -> None:
        status, reason = verdict if isinstance(verdict, tuple) else (200, "")
        if status == 200 and len(body) > 4096:
            status, reason = 413, "PayloadTooLarge"
        elif fault is not None:
            if fault.drop:
                proto.close()
                return
            status, reason = fault.status, fault.reason
        if status == 200:
            self.arrivals.append(time.monotonic())
            self.received.append(ApnsNotification(token, headers, _decode(body), verdict))  # type: ignore[arg-type]
            proto.send(stream_id, [(":status", "200"), ("apns-id", apns_id)], None)
            return
        if isinstance(verdict, tuple):
            self.rejected.append(reason)
        error: dict[str, Any] = {"reason": reason}
        if status == 410:
            error["timestamp"] = int(time.time() * 1000)
        proto.send(
            stream_id,
            [(":status", str(status)), ("apns-id", apns_id), ("content-type", "application/json")],
            json.dumps(error).encode(),
        )

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.tls_context.set_alpn_protocols(["h2"])
        protocol = _H2Protocol if self.engine == "h2" else _Protocol
        self._server = await loop.create_server(lambda: protocol(self), self.host, self.port, ssl=self.tls_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def to(self, token: str) -> list[ApnsNotification]:
        return [n for n in self.received if n.token == token]


class _Protocol(Http2ServerConnection):
    """One client connection: the fake answers each request as soon as it is complete."""

    def __init__(self, fake: ApnsFake):
        super().__init__(self._request, volatile=(b"apns-id",))
        self.fake = fake
        self.tasks: set[asyncio.Task[None]] = set()

    def _request(
        self, _: Http2ServerConnection, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.fake.respond(self, stream_id, {k.decode(): v.decode() for k, v in headers}, body)

    def send(self, stream_id: int, headers: list[tuple[str, str]], body: bytes | None) -> None:
        self.respond(stream_id, [(k.encode(), v.encode()) for k, v in headers], body)


class _H2Protocol(asyncio.Protocol):
    """The same fake on the h2 library's server connection (`engine="h2"`)."""

    def __init__(self, fake: ApnsFake):
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.fake = fake
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.conn.update_settings({3: 1000})  # MAX_CONCURRENT_STREAMS, as APNs does
        self._flush()

    def data_received(self, data: bytes) -> None:
        from h2.events import DataReceived, RequestReceived, StreamEnded
        from h2.exceptions import ProtocolError

        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = (list(event.headers), bytearray())
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self.requests.pop(event.stream_id)
                fields = {k.decode(): v.decode() for k, v in headers}
                self.fake.respond(self, event.stream_id, fields, bytes(body))  # type: ignore[arg-type]
        self._flush()

    def send(self, stream_id: int, headers: list[tuple[str, str]], body: bytes | None) -> None:
        from h2.exceptions import StreamClosedError

        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.conn.send_data(stream_id, body, end_stream=True)
        except StreamClosedError:
            return  # the client reset it
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
