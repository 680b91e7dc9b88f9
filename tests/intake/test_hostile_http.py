"""Every endpoint fed hostile input (hypothesis), over a raw socket so nothing is cleaned
up on the way: the answer is a 4xx or a 2xx (JSON whenever the gateway wrote it), never a
5xx, and no error or traceback reaches the log.

Two generators: arbitrary bytes anywhere (most stop at the HTTP parser, which must answer
400, not log a traceback), and well-formed authorized requests carrying hostile values in
path parameters, query parameters and bodies (these reach the handlers)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import API_KEY, make_config, speaker_job
from tests.hostile import SCALE, GatewayThread, hostile_string, json_value, mutated

ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/preview"),
    ("GET", "/v1/jobs/{}"),
    ("POST", "/v1/jobs/{}/cancel"),
    ("GET", "/v1/jobs/{}/decisions"),
    ("POST", "/v1/unsubscribe/{}"),
    ("GET", "/v1/unsubscribe/{}"),
    ("DELETE", "/v1/opt-outs/{}"),
    ("GET", "/v1/opt-outs"),
    ("GET", "/v1/invalid-tokens"),
    ("DELETE", "/v1/users/{}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/console/summary"),
    ("GET", "/console"),
    ("GET", "/console/{}"),
    ("GET", "/v1/{}"),  # no such route
    ("PATCH", "/v1/jobs"),  # no such method
]
QUERIES = ["offset", "limit", "now", "x", "cursor", "state", "created_after", "campaign", "tenant"]
QUERIES += ["outcome", "channel", "user_id"]
SETTINGS = settings(
    max_examples=300 * SCALE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("hostile-http")
    os.environ["GATEWAY_TEST_API_KEYS"] = API_KEY
    with GatewayThread(lambda _: make_config(tmp, server={"header_timeout": "5s", "body_timeout": "5s"})) as running:
        yield running


def check(status: int | None, headers: dict[str, str], answer: bytes, caplog: pytest.LogCaptureFixture) -> None:
    if status is not None:
        assert status < 500, (status, answer[:300])
        if status >= 400 and "application/json" in headers.get("content-type", ""):
            assert "error" in json.loads(answer)
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


junk = st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda t: t.encode("utf-8", "replace")))
header_name = st.sampled_from(
    [
        b"Authorization",
        b"Idempotency-Key",
        b"Content-Type",
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Origin",
        b"X-Anything",
        b"Accept",
        b"Expect",
    ]
)


@SETTINGS
@given(
    route=st.sampled_from(ROUTES),
    param=junk,
    query=junk,
    extra=st.lists(st.tuples(header_name, junk), max_size=3),
    body=st.binary(max_size=300) | st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 5000)),
)
def test_arbitrary_bytes_anywhere(gateway: GatewayThread, caplog, route, param, query, extra, body) -> None:
    method, path = route
    target = path.format(quote_from_bytes(param, safe=b"")) if "{}" in path else path
    if query:
        target += "?" + quote_from_bytes(query, safe=b"=&")
    lines = [
        f"{method} {target} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        f"Authorization: Bearer {API_KEY}".encode(),
    ]
    lines += [name + b": " + value.replace(b"\r", b"").replace(b"\n", b"") for name, value in extra]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        status, headers, answer = gateway.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    event(f"bytes: {method} {path} -> {status}")
    check(status, headers, answer, caplog)


visible = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
job_bodies = st.one_of(
    mutated(speaker_job(2)).map(lambda j: json.dumps(j).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.just(json.dumps(speaker_job(2)).encode()),
)


@SETTINGS
@given(
    route=st.sampled_from(ROUTES),
    param=hostile_string,
    query=st.dictionaries(st.sampled_from(QUERIES), hostile_string, max_size=3),
    key=st.sampled_from([API_KEY, None, "wrong-key"]) | visible,
    idempotency=st.none() | visible,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    body=job_bodies,
)
def test_well_formed_requests_with_hostile_values(
    gateway: GatewayThread, caplog, route, param, query, key, idempotency, content_type, body
) -> None:
    method, path = route
    target = path.format(quote_from_bytes(param.encode("utf-8", "surrogatepass"), safe=b"")) if "{}" in path else path
    if query:
        target += "?" + "&".join(
            f"{k}={quote_from_bytes(v.encode('utf-8', 'surrogatepass'), safe=b'')}" for k, v in query.items()
        )
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if idempotency is not None:
        headers["Idempotency-Key"] = idempotency
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        status, answer_headers, answer = gateway.request(method, target, body, headers)
    event(f"well-formed: {method} {path} -> {status}")
    check(status, answer_headers, answer, caplog)


def test_every_route_of_the_app_is_fuzzed() -> None:
    """A new endpoint must join ROUTES (and so both fuzzers)."""
    from gateway.app import Gateway
    from gateway.config import GatewayConfig
    from gateway.intake.api import make_app

    app = make_app(Gateway(GatewayConfig()), [])
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method not in ("HEAD", "*")}  # type: ignore[union-attr]
    names = {
        "/v1/jobs/{}": "job_id",
        "/v1/jobs/{}/cancel": "job_id",
        "/v1/jobs/{}/decisions": "job_id",
        "/v1/unsubscribe/{}": "token",
        "/v1/opt-outs/{}": "address",
        "/console/{}": "name",
        "/v1/users/{}": "user_id",
    }
    fuzzed = {(m, p.replace("{}", "{" + names.get(p, "x") + "}")) for m, p in ROUTES}
    assert served <= fuzzed, served - fuzzed
