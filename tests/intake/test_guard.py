"""Slow clients: a request's head must arrive within server.header_timeout and its body
within server.body_timeout; an idle kept-alive connection is left alone. On both paths a
job post can take (intake/fastpath.py and aiohttp's server)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.web_protocol import RequestHandler

from tests.conftest import make_config, speaker_job

TIMEOUTS = {"header_timeout": "300ms", "body_timeout": "300ms"}


@pytest.fixture(params=[True, False], ids=["plain-path", "aiohttp"])
def server(request: pytest.FixtureRequest) -> dict[str, object]:
    """The timeouts, for job posts read by intake/fastpath.py and by aiohttp's server."""
    return {**TIMEOUTS, "fast_intake": request.param}


def test_the_aiohttp_internal_the_guard_reads_still_exists() -> None:
    """gateway/intake/guard.py counts parsed heads through RequestHandler._request_count; an
    aiohttp that renames it must fail here, not silently stop timing slow clients."""
    assert "_request_count" in RequestHandler.__slots__


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def _head(body: bytes, length: int | None = None) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-key-0123456789\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
    ).encode()


async def test_a_head_trickled_slower_than_the_timeout_is_cut_off(start, tmp_path, server) -> None:
    running = await start(make_config(tmp_path, server=server))
    reader, writer = await _open(running.server.url)
    writer.write(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed by the server, without an answer
    assert loop.time() - started >= 0.3
    writer.close()


async def test_a_body_slower_than_the_timeout_is_a_408(start, tmp_path, server) -> None:
    running = await start(make_config(tmp_path, server=server))
    reader, writer = await _open(running.server.url)
    body = json.dumps(speaker_job(1)).encode()
    writer.write(_head(body) + body[:10])  # the head, then a tenth of the body
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    assert status_line.split()[1] == b"408"
    writer.close()
    assert running.gateway.metrics.jobs_rejected.values[("408",)] == 1


async def test_an_idle_kept_alive_connection_is_not_cut(start, tmp_path, server) -> None:
    running = await start(make_config(tmp_path, server=server))
    reader, writer = await _open(running.server.url)
    body = json.dumps(speaker_job(1)).encode()
    for _ in range(2):
        writer.write(_head(body) + body)
        async with asyncio.timeout(10):
            assert (await reader.readline()).split()[1] == b"202"
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        # idle for more than twice the header timeout (a wait that is the point of the
        # test, not a guess at how long something takes), then the next request on it
        await asyncio.sleep(0.7)
    writer.close()
