"""The plain-request path (gateway/intake/fastpath.py) held to h11 and to the aiohttp path.

- Its parser, both directions: any bytes it takes as a plain job post, h11 reads as the same
  request (method, target, fields, body, and where the next request starts); any plain job
  post h11's client writes, it takes, and any prefix of one it waits on.
- The gateway, both paths: the same requests get the same answers with `server.fast_intake`
  on and off; a connection that sends anything else is handed to aiohttp at a request
  boundary, answers in order; slow, idle and piled-up connections; a stop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.intake.fastpath import NEED_MORE, Head, parse_head
from tests.conftest import API_KEY, make_config, speaker_job

LIMIT = 1 << 20
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


# -- the parser against h11 --------------------------------------------------------------------


NAMES = (b"Host", b"host", b"Content-Length", b"content-length", b"Authorization", b"Idempotency-Key", b"Connection")
NAMES += (b"Transfer-Encoding", b"Expect", b"Upgrade", b"X-Trace", b"Content-Type", b"X Y", b"", b"X\x00")
VALUES = (b"127.0.0.1", b"5", b"05", b"+5", b"0x5", b"5 ", b" 5", b"-1", b"99999999999", b"chunked", b"100-continue")
VALUES += (b"Bearer " + API_KEY.encode(), b"bearer " + API_KEY.encode(), b"Bearer  x", b"Basic eA==", b"Bearer a b")
VALUES += (b"close", b"keep-alive", b"Upgrade", b"keep-alive, close", b"", b"a\tb", b"\x80\xff", b"a\x00b", b"a\x7f")
VALUES += (b"application/json", b"k-1")


def _field_lines() -> st.SearchStrategy[bytes]:
    """One field line, valid or not, as a client (or an attacker) might write it."""
    name = st.sampled_from(NAMES) | st.text(TOKEN_CHARS, min_size=1, max_size=8).map(str.encode)
    value = st.sampled_from(VALUES) | st.binary(max_size=6)
    sep = st.sampled_from([b":", b": ", b":\t", b" :", b":  "])
    return st.builds(lambda n, s, v, tail: n + s + v + tail, name, sep, value, st.sampled_from([b"", b" ", b"\t"]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request's bytes: mostly near a plain job post, with one or more things off."""
    plain = [b"POST /v1/jobs", b"POST /v1/jobs?wait=2s", b"POST /v1/jobs?wait=500ms", b"POST /v1/jobs?wait=1.5s"]
    off = [b"POST /v1/jobs/", b"POST /v1/jobs?wait=x", b"POST /v1/jobs?wait=2s&a=1", b"POST /v1/jobsx"]
    off += [b"post /v1/jobs", b"POST  /v1/jobs", b"POST /v1/jobs#f", b"PUT /v1/jobs", b"POST /v1/jobs?wait=2S"]
    line = draw(st.sampled_from(plain * 6 + off))
    versions = [b" HTTP/1.1"] * 12 + [b" HTTP/1.0", b" HTTP/1.10", b" http/1.1", b" HTTP/2", b"HTTP/1.1"]
    line += draw(st.sampled_from(versions))
    body = draw(st.binary(max_size=40))
    fields = [b"Host: 127.0.0.1", b"Authorization: Bearer " + API_KEY.encode(), b"Content-Length: %d" % len(body)]
    fields = draw(st.permutations(fields))
    for _ in range(draw(st.integers(0, 3))):
        line_ = draw(st.sampled_from([b"X-Trace: abc", b"Content-Type: application/json", b"Idempotency-Key: k-1"]))
        fields.insert(draw(st.integers(0, len(fields))), draw(st.just(line_) | _field_lines()))
    if draw(st.integers(0, 4)) == 0:
        fields = [f for f in fields if draw(st.integers(0, 9)) > 0]  # now and then one missing
    if draw(st.integers(0, 9)) == 0:
        fields.append(b" folded")  # obs-fold
    eol = draw(st.sampled_from([b"\r\n"] * 20 + [b"\n", b"\r"]))
    head = eol.join([line, *fields]) + b"\r\n\r\n"
    return head + body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST"]))


def _h11_reads(wire: bytes) -> tuple[h11.Request, bytes, bytes] | None:
    """The first request as h11's server reads it: (head, body, the bytes after it)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    try:
        event = server.next_event()
        if not isinstance(event, h11.Request):
            return None
        body = b""
        while not isinstance(more := server.next_event(), h11.EndOfMessage):
            if more is h11.NEED_DATA or not isinstance(more, h11.Data):
                return None
            body += more.data
    except h11.RemoteProtocolError:
        return None
    return event, body, server.trailing_data[0]


@settings(max_examples=1500, deadline=None)
@given(requests())
@example(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}")
@example(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n folded\r\n\r\n{}")
@example(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 02\r\n\r\n{}")
def test_what_the_parser_takes_h11_reads_the_same(wire: bytes) -> None:
    head = parse_head(wire, LIMIT)
    if not isinstance(head, Head):
        return  # aiohttp's to answer, or not all there yet
    read = _h11_reads(wire)
    assert read is not None, "taken as a plain job post, refused by h11"
    request, body, rest = read
    assert request.method == b"POST" and request.http_version == b"1.1"
    assert request.target == (b"/v1/jobs?wait=" + head.wait.encode() if head.wait else b"/v1/jobs")
    fields = dict(request.headers)  # h11: names in lower case, values stripped
    assert len(fields) == len(request.headers)
    assert int(fields[b"content-length"]) == head.length and b"host" in fields
    assert fields[b"authorization"] == b"Bearer " + head.token.encode() or fields[b"authorization"].lower() == (
        b"bearer " + head.token.encode().lower()
    )
    assert fields.get(b"idempotency-key") == (head.idempotency_key.encode() if head.idempotency_key else None)
    assert head.close == (b"close" in {t.strip() for t in fields.get(b"connection", b"").lower().split(b",")})
    assert head.expect == (fields.get(b"expect", b"").lower() == b"100-continue")
    assert body == wire[head.end : head.end + head.length]
    assert rest == wire[head.end + head.length :]


extra_fields = st.lists(
    st.tuples(
        st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
            lambda n: (
                n.lower()
                not in ("host", "content-length", "authorization", "idempotency-key", "connection", "transfer-encoding")
                and n.lower() not in ("expect", "upgrade")
            )
        ),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    ),
    max_size=5,
    unique_by=lambda f: f[0].lower(),
)


@settings(max_examples=300, deadline=None)
@given(
    extra_fields,
    st.sampled_from([None, "2s", "500ms", "1.25s"]),
    st.sampled_from([None, "order-4711", "k"]),
    st.sampled_from([None, "close", "keep-alive"]),
    st.booleans(),
    st.binary(max_size=64),
)
def test_every_plain_job_post_h11_writes_is_taken(extra, wait, key, connection, expect, body) -> None:
    fields = [("Host", "gw.example"), ("Authorization", f"Bearer {API_KEY}"), ("Content-Length", str(len(body)))]
    fields += extra + ([("Idempotency-Key", key)] if key else []) + ([("Connection", connection)] if connection else [])
    fields += [("Expect", "100-continue")] if expect else []
    client = h11.Connection(h11.CLIENT)
    target = f"/v1/jobs?wait={wait}" if wait else "/v1/jobs"
    wire = client.send(h11.Request(method="POST", target=target, headers=fields))
    end = len(wire)
    wire += client.send(h11.Data(data=body)) + client.send(h11.EndOfMessage())
    head = parse_head(wire, LIMIT)
    assert head == Head(end, len(body), wait, API_KEY, key, connection == "close", expect)
    for cut in (0, 1, 5, len(b"POST /v1/jobs"), end // 2, end - 1):
        assert parse_head(wire[:cut], LIMIT) == NEED_MORE  # a head still arriving is waited for


def test_bodies_over_the_limit_and_long_heads_are_aiohttps() -> None:
    wire = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 11\r\n\r\n"
    assert isinstance(parse_head(wire, 11), Head)
    assert parse_head(wire, 10) is None  # the 413 is aiohttp's
    long = wire[:-2] + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    assert parse_head(long, 11) is None and parse_head(long[:8000], 11) == NEED_MORE


# -- the gateway, both paths ---------------------------------------------------------------------


async def _exchange(url: str, wire: bytes, answers: int = 1) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Raw bytes to the gateway, then up to `answers` responses (status, fields, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    try:
        writer.write(wire)
        async with asyncio.timeout(20):
            while len(out) < answers and (line := await reader.readline()):
                fields = {}
                while (field := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = field.partition(b":")
                    fields[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
                out.append((int(line.split()[1]), fields, body))
    finally:
        writer.close()
    return out


def _post(body: bytes, *fields: str, target: str = "/v1/jobs", key: str = API_KEY) -> bytes:
    head = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}", *fields]
    return ("\r\n".join([*head, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body


def _job(n: int = 1, **overrides: Any) -> bytes:
    return json.dumps(speaker_job(n, **overrides)).encode()


CASES = {
    "accepted": _post(_job()),
    "accepted, wait": _post(_job(), target="/v1/jobs?wait=2s"),
    "not JSON": _post(b"{nope"),
    "an unknown field": _post(json.dumps({**speaker_job(1), "colour": "red"}).encode()),
    "no recipients": _post(json.dumps({**speaker_job(1), "recipients": []}).encode()),
    "a bad wait (aiohttp's)": _post(_job(), target="/v1/jobs?wait=soon"),
    "a wrong key (aiohttp's)": _post(_job(), key="not-a-key"),
    "over the limit (aiohttp's)": _post(b"x" * 70_000),
    "an Idempotency-Key": _post(_job(), "Idempotency-Key: same-key"),
    "the key, another job": _post(_job(2), "Idempotency-Key: same-key"),
    "the key with spaces (aiohttp's)": _post(_job(), "Idempotency-Key: a b"),
    "another expectation (aiohttp's)": _post(_job(), "Expect: 200-ok"),
}


def _shape(answer: tuple[int, dict[bytes, bytes], bytes]) -> tuple[Any, ...]:
    """An answer without what differs by run (job ids, times)."""
    status, fields, body = answer
    data = json.loads(body)
    if "job_id" in data:
        data = {k: v for k, v in data.items() if k not in ("job_id", "created_at", "finished_at", "decisions")}
    where = fields.get(b"location", b"").rsplit(b"/", 1)[0]
    return status, fields.get(b"content-type"), fields.get(b"retry-after"), where, data


async def test_both_paths_answer_alike(start, receiver, tmp_path) -> None:
    answers = {}
    for fast in (True, False):
        config = make_config(tmp_path / str(fast), receiver.url, limits={"max_body_bytes": 65536})
        config.server.fast_intake = fast
        running = await start(config)
        assert (running.server.fast is not None) == fast
        answers[fast] = {name: _shape((await _exchange(running.server.url, wire))[0]) for name, wire in CASES.items()}
    assert answers[True] == answers[False]
    assert answers[True]["accepted"][0] == 202 and answers[True]["accepted, wait"][0] == 200
    assert answers[True]["the key, another job"][0] == 409


async def test_a_connection_is_handed_to_aiohttp_at_a_request_boundary(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    missing = b"GET /v1/jobs/0123 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n\r\n"
    wire = _post(_job()) + _post(_job(2)) + missing + _post(_job(3)) + _post(b"{nope")
    answers = await _exchange(running.server.url, wire, answers=5)  # one write: all pipelined
    assert [a[0] for a in answers] == [202, 202, 404, 202, 400]
    assert [json.loads(a[2]).get("recipients") for a in answers] == [1, 2, None, 3, None]


async def test_requests_piled_up_past_the_buffer_are_all_answered_in_order(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url, limits={"max_body_bytes": 4096}))
    jobs = [_job(1 + i % 3, campaign=f"c{i}") for i in range(40)]  # ~20 KB: past 4 KiB + a head's 8 KiB
    answers = await _exchange(running.server.url, b"".join(_post(j) for j in jobs), answers=40)
    assert [a[0] for a in answers] == [202] * 40
    assert [json.loads(a[2])["recipients"] for a in answers] == [1 + i % 3 for i in range(40)]


async def test_connection_close_is_honoured_and_an_idle_connection_closed(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    answers = await _exchange(running.server.url, _post(_job(), "Connection: close") + _post(_job()), answers=2)
    assert [a[0] for a in answers] == [202] and answers[0][1][b"connection"] == b"close"
    assert running.server.fast is not None
    running.server.fast.keepalive = 0.2
    host, port = running.server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_post(_job()))
    async with asyncio.timeout(20):
        assert (await reader.readline()).startswith(b"HTTP/1.1 202")
        while await reader.read(65536):  # the answer, then nothing until the server closes
            pass
    writer.close()


async def test_a_stop_closes_idle_connections_and_answers_those_under_way(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    host, port = running.server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(_post(_job()))
    async with asyncio.timeout(20):
        assert (await reader.readline()).startswith(b"HTTP/1.1 202")
    await running.server.stop()
    async with asyncio.timeout(20):
        while await reader.read(65536):
            pass  # the rest of the answer, then the end of the connection
    writer.close()


@pytest.mark.parametrize("cut", [5, 40, 90])
async def test_a_client_that_leaves_mid_request_leaves_nothing_behind(start, receiver, tmp_path, cut) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    host, port = running.server.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(_post(_job())[:cut])
    writer.close()
    await writer.wait_closed()
    fast = running.server.fast
    assert fast is not None
    async with asyncio.timeout(20):
        while fast.connections:
            await asyncio.sleep(0.01)
    assert (await _exchange(running.server.url, _post(_job())))[0][0] == 202


async def test_expect_100_continue_is_met_before_the_body(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    host, port = running.server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    wire = _post(_job(), "Expect: 100-continue")
    head, body = wire.split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    async with asyncio.timeout(20):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await reader.readline()).startswith(b"HTTP/1.1 202")
    writer.close()
