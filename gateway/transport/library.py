"""The library-backed transports, behind the same seam as ours (`seam.py`): aiohttp's client
for the HTTP/1.1 channels (`transport = "aiohttp"`), aioapns for APNs
(`transport = "aioapns"`). Ours are the default: they measured 4-10x less CPU per
request (`benchmarks/channels.py`, `benchmarks/http2.py` report both side by side); these
are the field's standard implementations, for a deployment that prefers them, and the
independent clients our fakes are also tested against.

Both keep our contract: a request we cannot build is a `RequestError` before anything is
sent, the provider's faults are `OSError` or `TimeoutError`, never a library's own
exception type.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.transport.errors import AddressNotAllowed, RequestError, check_header
from gateway.transport.http1 import _TARGET, USER_AGENT, Http1Pool, HttpError, Response


class _CheckedResolver(AbstractResolver):
    """Only the addresses the operator allows (the check and the connection use the same
    address, as Http1Pool's do)."""

    def __init__(self, allowed: Callable[[str], bool]):
        self.allowed = allowed
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept = [r for r in found if self.allowed(r["host"])]
        if not kept:
            raise AddressNotAllowed(f"{host} resolves only to addresses that are not allowed ({found[0]['host']})")
        return kept

    async def close(self) -> None:
        await self.inner.close()


class AiohttpPool:
    """`Http1Pool`'s interface (`post`, `path`, `in_flight`, `last_used`, `aclose`) on an
    aiohttp `ClientSession`."""

    def __init__(
        self,
        url: str,
        ssl: ssl_module.SSLContext | None = None,
        connect_timeout: float = 10.0,
        max_idle: int = 64,
        max_connections: int | None = 256,
        address_allowed: Callable[[str], bool] | None = None,
    ):
        layout = Http1Pool(url)  # the URL's checks, target and Host, as ours has them
        self.url, self.path = url, layout.path
        self.origin = f"{'https' if layout.tls else 'http'}://{layout.host_header}"
        self.host = layout.host
        self.in_flight = 0
        self.last_used = 0.0
        self.connect_timeout = connect_timeout
        self._ssl = ssl
        self._limit = max_connections or 0
        self._allowed = address_allowed
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = _CheckedResolver(self._allowed) if self._allowed is not None else None
            connector = aiohttp.TCPConnector(
                limit=self._limit, ssl=self._ssl if self._ssl is not None else True, resolver=resolver
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def request_bytes(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """The same checks as ours (a RequestError before anything is sent)."""
        if not _TARGET.fullmatch(target):
            raise RequestError(f"request target {target[:60]!r} is not an origin-form path and query")
        for name, value in headers:
            check_header(name, value)

    async def post(
        self, target: str, headers: Iterable[tuple[str, str]], body: bytes, timeout: float | None = None
    ) -> Response:
        headers = list(headers)
        self.request_bytes("POST", target, headers, body)
        if self._allowed is not None and _is_ip(self.host) and not self._allowed(self.host):
            # aiohttp connects to an address literal without resolving it: checked here
            raise AddressNotAllowed(f"{self.host} is not an address that is allowed")
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        try:
            client = self._client()
            limits = aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout)
            try:
                async with client.post(
                    self.origin + target,
                    data=body,
                    headers=[("User-Agent", USER_AGENT), *headers],
                    timeout=limits,
                    allow_redirects=False,
                ) as answer:
                    data = await answer.read()
                    raw = b"\r\n".join(k + b": " + v for k, v in answer.raw_headers)
                    return Response(answer.status, raw, data)
            except AddressNotAllowed:
                raise
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, AddressNotAllowed):
                    raise exc.os_error from None
                raise OSError(str(exc)) from exc
            except TimeoutError:
                raise
            except aiohttp.ClientError as exc:  # a response that could not be read
                raise HttpError(str(exc)) from exc
        finally:
            self.in_flight -= 1
            self.last_used = loop.time()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AioapnsPool:
    """`Http2Pool`'s interface for APNs (`request_all`, `request`, `authority`, `aclose`)
    on aioapns: the requests our APNs channel builds, sent as aioapns notifications (it
    signs its own provider tokens with the same key). aioapns has no endpoint option: the
    host and port are set on its protocol class (an internal: aioapns is bounded in
    pyproject.toml and a test checks the attributes are there)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        key: str,
        key_id: str,
        team_id: str,
        topic: str,
        sandbox: bool = False,
        ssl: ssl_module.SSLContext | None = None,
        max_connections: int = 4,
    ):
        from aioapns import APNs

        from gateway.transport.http2 import tls_context

        self.authority = (host if port == 443 else f"{host}:{port}").encode()
        self.client = APNs(
            key=key,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            use_sandbox=sandbox,
            ssl_context=tls_context(ssl),
            max_connections=max_connections,
            err_func=_quiet,
        )
        pool = self.client.pool
        pool.protocol_class = type("Endpoint", (pool.protocol_class,), {"APNS_SERVER": host, "APNS_PORT": port})

    async def request_all(
        self,
        requests: list[tuple[list[tuple[bytes, bytes]], bytes]],
        timeout: float,
        on_outcome: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        outcomes: list[Any] = [None] * len(requests)

        async def one(index: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            try:
                outcome: Any = await asyncio.wait_for(self._send(headers, body), timeout)
            except (TimeoutError, OSError) as exc:
                outcome = exc
            except Exception as exc:  # aioapns's own (MaxAttemptsExceeded, ConnectionClosed...)
                outcome = OSError(f"{type(exc).__name__}: {exc}")
            outcomes[index] = outcome
            if on_outcome is not None:
                on_outcome(index, outcome)

        await asyncio.gather(*(one(i, h, b) for i, (h, b) in enumerate(requests)))
        return outcomes

    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float) -> Any:
        (outcome,) = await self.request_all([(headers, body)], timeout)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _send(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        import json
        import time

        from aioapns import NotificationRequest, PushType

        from gateway.transport.http2 import Response as Http2Response

        fields = {name.decode(): value.decode() for name, value in headers}
        expiration = fields.get("apns-expiration")
        request = NotificationRequest(
            device_token=fields[":path"].rsplit("/", 1)[1],
            message=json.loads(body),
            notification_id=fields.get("apns-id"),
            time_to_live=max(0, int(expiration) - int(time.time())) if expiration else None,
            priority=int(fields["apns-priority"]) if "apns-priority" in fields else None,
            collapse_key=fields.get("apns-collapse-id"),
            push_type=PushType(fields["apns-push-type"]) if "apns-push-type" in fields else None,
            apns_topic=fields.get("apns-topic"),
        )
        result = await self.client.send_notification(request)
        reply = json.dumps({"reason": result.description}).encode() if result.description else b""
        return Http2Response(int(result.status), [(b":status", str(result.status).encode())], reply)

    async def aclose(self) -> None:
        self.client.pool.close()


async def _quiet(request: Any, result: Any) -> None:
    """aioapns logs every refusal at ERROR; the channel decides what they mean."""
