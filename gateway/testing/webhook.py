"""A local webhook receiver that verifies Standard Webhooks signatures.

Used by the tests, `gateway demo` and the benchmarks, and meant for plugin authors too.
It rejects a bad signature (401) or a timestamp more than `tolerance` seconds off (400),
keeps the first copy of each `webhook-id` and counts redeliveries of the same id (the
idempotency a real receiver applies), and can inject faults: a scripted status per
device, `Retry-After`, latency, or a dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.testing._http import FakeServer
from gateway.testing._http1 import Request, Response, after, json_response, serve_http1


@dataclass
class Received:
    webhook_id: str
    path: str
    timestamp: int
    payload: dict[str, Any]
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    copies: int = 1


@dataclass
class Fault:
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


# fault(payload, attempt) -> Fault | None; attempt counts copies of that webhook-id, from 1.
FaultScript = Callable[[dict[str, Any], int], "Fault | None"]


@dataclass
class WebhookReceiver(FakeServer):
    secret: str | None  # whsec_...; None accepts unsigned requests (peers that cannot sign)
    tolerance: float = 300.0
    fault: FaultScript | None = None
    latency: float = 0.0
    received: dict[str, Received] = field(default_factory=dict)
    # time.monotonic() of each first receipt, in the order of `received` (latency figures)
    arrivals: list[float] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    url: str = ""
    engine: str = "gateway"  # or "aiohttp": its server, which shares no code with our client
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def duplicates(self) -> int:
        """Copies of an id beyond the first that were answered 2xx."""
        return sum(r.copies - 1 for r in self.received.values())

    def verify(self, headers: Any, body: bytes) -> str | None:
        """None when the request is authentic, else why not."""
        msg_id = headers.get("webhook-id")
        stamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not (msg_id and stamp and signatures):
            return "missing webhook headers"
        try:
            timestamp = int(stamp)
        except ValueError:
            return "bad timestamp"
        if abs(time.time() - timestamp) > self.tolerance:
            return "timestamp outside tolerance"
        assert self.secret is not None
        key = _key(self.secret)
        expected = base64.b64encode(
            hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        for signature in signatures.split(" "):
            version, _, value = signature.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return None
        return "no valid signature"

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Status callbacks received (their envelopes: id, type, created_at, data), in the
        order they first arrived, once each; `type`: only those."""
        return [r.payload for r in self.received.values() if type is None or r.payload.get("type") == type]

    def _handle(self, request: Request) -> Response | Awaitable[Response | None] | None:
        body = request.body
        problem = self.verify(request.headers, body) if self.secret is not None else None
        if problem is not None:
            self.rejected.append(problem)
            return json_response({"error": problem}, status=401 if "signature" in problem else 400)
        msg_id = request.headers.get("webhook-id") or f"unsigned-{len(self.attempts)}"
        payload = msgspec.json.decode(body)
        attempt = self.attempts[msg_id] = self.attempts.get(msg_id, 0) + 1
        fault = self.fault(payload, attempt) if self.fault else None
        delay = self.latency + (fault.delay if fault else 0.0)
        if delay:
            return after(delay, self._answer, request, msg_id, payload, fault)
        return self._answer(request, msg_id, payload, fault)

    def _answer(self, request: Request, msg_id: str, payload: Any, fault: Fault | None) -> Response | None:
        if fault is not None and fault.drop:
            request.transport.abort()
            return None
        status = fault.status if fault else 200
        if 200 <= status < 300:
            if msg_id in self.received:
                self.received[msg_id].copies += 1
            else:
                self.arrivals.append(time.monotonic())
                self.received[msg_id] = Received(
                    msg_id,
                    request.path,
                    int(request.headers.get("webhook-timestamp", 0)),
                    payload,
                    request.body,
                    dict(request.headers),
                )
            self._arrived.set()
        headers = {"Retry-After": fault.retry_after} if fault and fault.retry_after else None
        return json_response({"ok": 200 <= status < 300}, status=status, headers=headers)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` distinct deliveries have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server, self.url = await serve_http1(self._handle, host, port, engine=self.engine)
        return self.url


@functools.lru_cache(maxsize=16)
def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()
