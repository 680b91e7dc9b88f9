"""One conformance suite for both implementations behind each transport seam
(`gateway/transport/seam.py`): ours and the library-backed one must answer alike.

HTTP/1.1: ours (`Http1Pool`) and aiohttp's client (`AiohttpPool`), against the fakes'
server and aiohttp's. APNs: ours (`Http2Pool`) and aioapns (`AioapnsPool`), against the
APNs fake on our HTTP/2 server and on h2's.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme

from gateway.testing import ApnsFake, ApnsFault
from gateway.testing._http1 import Response as FakeResponse
from gateway.testing._http1 import after, serve_http1
from gateway.transport.errors import AddressNotAllowed, RequestError
from gateway.transport.http2 import Response as Http2Response
from gateway.transport.seam import apns_transport, http1_transport

HTTP1 = ["gateway", "aiohttp"]
ENGINES = ["gateway", "aiohttp"]


def handler(request: Any) -> Any:
    if request.path == "/slow":
        return after(1, lambda: FakeResponse(200, b"late"))
    if request.path == "/drop":
        request.transport.close()
        return None
    return FakeResponse(201, request.body[::-1], {"X-Seen": request.headers.get("x-token", "")})


@pytest.fixture(params=ENGINES)
async def origin(request) -> Any:
    server, url = await serve_http1(handler, "127.0.0.1", 0, engine=request.param)
    yield url
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", HTTP1)
async def test_a_post_and_its_answer(origin: str, kind: str) -> None:
    pool = http1_transport(kind, f"{origin}/hook")  # type: ignore[arg-type]
    try:
        for _ in range(3):  # the connection is kept and reused
            response = await pool.post("/hook", [("X-Token", "t1")], b"abc", timeout=5)
            assert (response.status, response.body, response.headers["x-seen"]) == (201, b"cba", "t1")
        assert pool.in_flight == 0 and pool.last_used > 0
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
async def test_no_answer_in_time_is_a_timeout(origin: str, kind: str) -> None:
    pool = http1_transport(kind, f"{origin}/slow")  # type: ignore[arg-type]
    try:
        with pytest.raises(TimeoutError):
            await pool.post("/slow", [], b"", timeout=0.2)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
async def test_a_dropped_connection_is_an_oserror(origin: str, kind: str) -> None:
    pool = http1_transport(kind, f"{origin}/drop")  # type: ignore[arg-type]
    try:
        with pytest.raises(OSError):
            await pool.post("/drop", [], b"x", timeout=5)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
async def test_a_refused_connection_is_an_oserror(kind: str) -> None:
    pool = http1_transport(kind, "http://127.0.0.1:1/hook")  # type: ignore[arg-type]
    try:
        with pytest.raises(OSError):
            await pool.post("/hook", [], b"", timeout=5)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
@pytest.mark.parametrize(
    ("target", "headers"), [("/a b", []), ("/hook", [("X-A", "a\r\nX-B: b")]), ("/hook", [("Bad Name", "v")])]
)
async def test_a_request_that_cannot_be_built_is_not_sent(origin: str, kind: str, target: str, headers: Any) -> None:
    pool = http1_transport(kind, f"{origin}/hook")  # type: ignore[arg-type]
    try:
        with pytest.raises(RequestError):
            await pool.post(target, headers, b"", timeout=5)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
async def test_an_address_that_is_not_allowed_is_not_connected_to(origin: str, kind: str) -> None:
    pool = http1_transport(kind, f"{origin}/hook", address_allowed=lambda address: False)  # type: ignore[arg-type]
    try:
        with pytest.raises(AddressNotAllowed):
            await pool.post("/hook", [], b"", timeout=5)
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", HTTP1)
async def test_tls_with_a_private_ca(kind: str) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    server, url = await serve_http1(handler, "127.0.0.1", 0, server_tls)
    pool = http1_transport(kind, f"{url}/hook", ssl=client)  # type: ignore[arg-type]
    untrusting = http1_transport(kind, f"{url}/hook")  # type: ignore[arg-type]
    try:
        assert (await pool.post("/hook", [], b"ok", timeout=5)).status == 201
        with pytest.raises(OSError):
            await untrusting.post("/hook", [], b"", timeout=5)
    finally:
        await pool.aclose()
        await untrusting.aclose()
        server.close()


# -- APNs ------------------------------------------------------------------------------------------
APNS = ["gateway", "aioapns"]
TOKEN = "ab" * 32


@pytest.fixture(params=["gateway", "h2"])
async def apns(request) -> Any:
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with ApnsFake(tls, engine=request.param) as fake:
        yield fake, client


def apns_pool(kind: str, fake: ApnsFake, client: ssl.SSLContext) -> Any:
    return apns_transport(
        kind,  # type: ignore[arg-type]
        "127.0.0.1",
        fake.port,
        ssl=client,
        key=fake.key_pem(),
        key_id=fake.key_id,
        team_id=fake.team_id,
        topic="com.shop.app",
    )


def apns_request(fake: ApnsFake, token: str, pool: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
    import uuid

    from plugins.apns import ProviderToken

    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", pool.authority),
        (b":path", b"/3/device/" + token.encode()),
        (b"authorization", ProviderToken(fake.team_id, fake.key_id, fake.key_pem()).current()),
        (b"apns-topic", b"com.shop.app"),
        (b"apns-push-type", b"alert"),
        (b"apns-priority", b"10"),
        (b"apns-id", str(uuid.uuid4()).encode()),
    ]
    return headers, b'{"aps":{"alert":{"title":"Hi"}}}'


@pytest.mark.parametrize("kind", APNS)
async def test_apns_answers_alike(apns, kind: str) -> None:
    fake, client = apns
    fake.fault = lambda token, attempt: ApnsFault(410, "Unregistered") if token == "cd" * 32 else None
    pool = apns_pool(kind, fake, client)
    seen: list[int] = []
    try:
        outcomes = await pool.request_all(
            [apns_request(fake, TOKEN, pool), apns_request(fake, "cd" * 32, pool)], 5, lambda i, o: seen.append(i)
        )
        ok, gone = outcomes
        assert isinstance(ok, Http2Response) and ok.status == 200
        assert isinstance(gone, Http2Response) and gone.status == 410 and b"Unregistered" in gone.body
        assert sorted(seen) == [0, 1] and [n.token for n in fake.received] == [TOKEN]
    finally:
        await pool.aclose()


@pytest.mark.parametrize("kind", APNS)
async def test_apns_no_answer_in_time_is_a_timeout(apns, kind: str) -> None:
    fake, client = apns
    fake.fault = lambda token, attempt: ApnsFault(delay=1)
    pool = apns_pool(kind, fake, client)
    try:
        (outcome,) = await pool.request_all([apns_request(fake, TOKEN, pool)], 0.3)
        assert isinstance(outcome, TimeoutError)
    finally:
        await pool.aclose()
        await asyncio.sleep(0)
