"""A local Web Push service that decrypts every payload and verifies VAPID.

`subscription()` creates a browser-side subscription (a P-256 key pair and auth secret,
like PushManager.subscribe) whose endpoint points here. Each POST must carry a VAPID
`Authorization: vapid t=<ES256 JWT>,k=<public key>` whose `aud` is this origin, `exp` is
in the future and at most 24 h away, and `sub` is a mailto:/https: URI, plus a `TTL`;
the aes128gcm body is decrypted with the subscriber's private key (http_ece). Faults are
scripted per subscription: `fault(subscription_id, attempt) -> WebPushFault | None`.
Serve it over TLS (push endpoints are https) by passing a server SSL context.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.testing._http import FakeServer
from gateway.testing._http1 import Request, Response, after, serve_http1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class WebPushFault:
    status: int = 201  # 201 with delay/drop: answer normally, late or not at all
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class Pushed:
    subscription_id: str
    payload: dict[str, Any]
    headers: dict[str, str]
    vapid_claims: dict[str, Any]


@dataclass
class WebPushFake(FakeServer):
    tls_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    fault: Callable[[str, int], WebPushFault | None] | None = None
    received: list[Pushed] = field(default_factory=list)
    # time.monotonic() of each first receipt, in the order of `received` (latency figures)
    arrivals: list[float] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    origin: str = ""
    engine: str = "gateway"  # or "aiohttp": its server, which shares no code with our client
    _keys: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = field(default_factory=dict)
    _verified: dict[str, dict[str, Any]] = field(default_factory=dict)  # "t=..,k=.." -> its claims

    def subscription(self, sub_id: str | None = None) -> dict[str, Any]:
        """A browser's PushSubscription JSON, with this service's endpoint (its last path
        segment `sub_id`, random by default)."""
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        sub_id = sub_id or secrets.token_urlsafe(12)
        self._keys[sub_id] = (key, auth)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": f"{self.origin}/push/{sub_id}", "keys": {"p256dh": _b64(public), "auth": _b64(auth)}}

    def _verify_vapid(self, header: str) -> dict[str, Any]:
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError("not a vapid Authorization")
        claims = self._verified.get(params)
        if claims is None:  # the signature once per token: senders reuse a token for hours
            fields = dict(part.strip().split("=", 1) for part in params.split(","))
            point = _unb64(fields["k"])
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            claims = jwt.decode(
                fields["t"], public, algorithms=["ES256"], audience=self.origin, options={"verify_exp": False}
            )  # checked below, on every request
            if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
                raise ValueError("sub must be mailto: or https:")
            if len(self._verified) > 64:
                self._verified.clear()
            self._verified[params] = claims
        if not 0 < claims["exp"] - time.time() <= 86400:
            raise ValueError("exp must be in the future and at most 24 h away")
        return claims

    def _push(self, request: Request) -> Response | Awaitable[Response | None] | None:
        sub_id = request.path.removeprefix("/push/")
        if request.method != "POST" or not request.path.startswith("/push/") or sub_id not in self._keys:
            return Response(404)
        try:
            claims = self._verify_vapid(request.headers.get("Authorization", ""))
        except (ValueError, KeyError, jwt.InvalidTokenError) as exc:
            self.rejected.append(f"vapid: {exc}")
            return Response(401, str(exc).encode())
        if "TTL" not in request.headers or request.headers.get("Content-Encoding") != "aes128gcm":
            self.rejected.append("missing TTL or wrong Content-Encoding")
            return Response(400)
        attempt = self.attempts[sub_id] = self.attempts.get(sub_id, 0) + 1
        fault = self.fault(sub_id, attempt) if self.fault else None
        if fault is not None and fault.delay:
            return after(fault.delay, self._answer, request, sub_id, claims, fault)
        return self._answer(request, sub_id, claims, fault)

    def _answer(
        self, request: Request, sub_id: str, claims: dict[str, Any], fault: WebPushFault | None
    ) -> Response | None:
        if fault is not None:
            if fault.drop:
                request.transport.abort()
                return None
            if fault.status != 201:
                return Response(fault.status, headers={"Retry-After": fault.retry_after} if fault.retry_after else None)
        key, auth = self._keys[sub_id]
        try:
            plaintext = http_ece.decrypt(request.body, private_key=key, auth_secret=auth, version="aes128gcm")
        except Exception as exc:
            self.rejected.append(f"decrypt: {type(exc).__name__}")
            return Response(400, b"cannot decrypt")
        self.arrivals.append(time.monotonic())
        self.received.append(Pushed(sub_id, json.loads(plaintext), request.headers, claims))
        return Response(201, headers={"Location": f"{self.origin}/message/{secrets.token_hex(6)}"})

    async def start(self, port: int = 0) -> str:
        self._server, self.origin = await serve_http1(self._push, self.host, port, self.tls_context, self.engine)
        return self.origin

    def to(self, subscription: dict[str, Any]) -> list[Pushed]:
        sub_id = subscription["endpoint"].rsplit("/", 1)[1]
        return [p for p in self.received if p.subscription_id == sub_id]
