"""The one seam between channels and HTTP clients: what a channel may call, whichever
implementation its config picks (`transport = ...`).

    HTTP/1.1 (speaker webhook, FCM, web push): `Http1Transport`
        ours: `http1.Http1Pool` (default, "gateway"); aiohttp's: `library.AiohttpPool` ("aiohttp")
    HTTP/2 to APNs: `ApnsTransport` (`plugins/apns.py` builds its requests on it)
        ours: `http2.Http2Pool` (default, "gateway"); aioapns: `library_apns.AioapnsClient` ("aioapns")

Both implementations of each pass the same conformance suite
(`tests/dispatch/test_transport_conformance.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from gateway.transport.http1 import Http1Pool, Response

Http1Kind = Literal["gateway", "aiohttp"]


class Http1Transport(Protocol):
    """Requests to one origin."""

    path: str  # the configured URL's path and query
    in_flight: int
    last_used: float  # loop time of the last request's end

    async def post(
        self, target: str, headers: Iterable[tuple[str, str]], body: bytes, timeout: float | None = None
    ) -> Response:
        """POST; a `Response`, or RequestError (not sent), OSError or TimeoutError."""
        ...

    async def aclose(self) -> None: ...


def http1_transport(
    kind: Http1Kind,
    url: str,
    *,
    max_idle: int = 64,
    max_connections: int | None = 256,
    address_allowed: Callable[[str], bool] | None = None,
    **options: Any,
) -> Http1Transport:
    """The HTTP/1.1 transport a channel's config names."""
    if kind == "aiohttp":
        from gateway.transport.library import AiohttpPool

        return AiohttpPool(
            url, max_idle=max_idle, max_connections=max_connections, address_allowed=address_allowed, **options
        )
    return Http1Pool(
        url, max_idle=max_idle, max_connections=max_connections, address_allowed=address_allowed, **options
    )


ApnsKind = Literal["gateway", "aioapns"]


class ApnsTransport(Protocol):
    """HTTP/2 requests to one APNs origin, sent together (`Http2Pool`'s interface)."""

    authority: bytes

    async def request_all(
        self,
        requests: list[tuple[list[tuple[bytes, bytes]], bytes]],
        timeout: float,
        on_outcome: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Each request's `http2.Response`, or the error that ended it (OSError, TimeoutError)."""
        ...

    async def aclose(self) -> None: ...


def apns_transport(
    kind: ApnsKind,
    host: str,
    port: int,
    *,
    ssl: Any = None,
    max_connections: int = 4,
    volatile: Iterable[bytes] = (),
    key: str = "",
    key_id: str = "",
    team_id: str = "",
    topic: str = "",
    sandbox: bool = False,
) -> ApnsTransport:
    """The APNs transport a channel's config names (aioapns signs its own tokens)."""
    if kind == "aioapns":
        from gateway.transport.library import AioapnsPool

        return AioapnsPool(
            host,
            port,
            key=key,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            sandbox=sandbox,
            ssl=ssl,
            max_connections=max_connections,
        )
    from gateway.transport.http2 import Http2Pool

    return Http2Pool(host, port, ssl=ssl, max_connections=max_connections, volatile=volatile)
