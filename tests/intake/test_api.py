from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, GatewayConfig
from gateway.server import keys_for, start_server
from tests.conftest import API_KEY, make_config, speaker_job


async def test_202_then_status_with_decisions(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    status, body, headers = await running.post(speaker_job(3))
    assert status == 202
    assert body == {"job_id": body["job_id"], "recipients": 3}
    assert headers["Location"] == f"/v1/jobs/{body['job_id']}"
    done = await running.wait(body["job_id"])
    assert done["counts"]["sent"] == 3
    assert [d["user_id"] for d in done["decisions"]] == ["u0", "u1", "u2"]
    assert {d["outcome"] for d in done["decisions"]} == {"sent"}
    assert len(receiver.received) == 3


async def test_decisions_are_paginated(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    _, body, _ = await running.post(speaker_job(7))
    await running.wait(body["job_id"])
    seen = []
    offset = 0
    while offset is not None:
        page = await running.status(body["job_id"], offset=str(offset), limit="3")
        assert len(page["decisions"]) <= 3
        seen += [d["user_id"] for d in page["decisions"]]
        offset = page["next_offset"]
    assert seen == [f"u{i}" for i in range(7)]


async def test_bad_pagination_and_unknown_job(api) -> None:
    async with api.http.get("/v1/jobs/nope") as r:
        assert r.status == 404
    _, body, _ = await api.post(speaker_job(1))
    async with api.http.get(f"/v1/jobs/{body['job_id']}", params={"limit": "0"}) as r:
        assert r.status == 400
    async with api.http.get(f"/v1/jobs/{body['job_id']}", params={"offset": "x"}) as r:
        assert r.status == 400


async def test_idempotency_same_body_replays_different_body_conflicts(api) -> None:
    job = speaker_job(2)
    first = await api.post(job, headers={"Idempotency-Key": "k-1"})
    again = await api.post(job, headers={"Idempotency-Key": "k-1"})
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    other = dict(job, campaign="another")
    conflict = await api.post(other, headers={"Idempotency-Key": "k-1"})
    assert conflict[0] == 409
    assert conflict[1]["error"] == "idempotency_key_reused"
    assert "it differs at $.campaign;" in conflict[1]["message"]
    fresh = await api.post(other, headers={"Idempotency-Key": "k-2"})
    assert fresh[0] == 202 and fresh[1]["job_id"] != first[1]["job_id"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.randoms(use_true_random=False), indent=st.sampled_from([None, 1, 4]))
def test_idempotency_compares_the_job_not_its_bytes(seed, indent) -> None:
    """The same job re-serialized on retry (other whitespace, another key order) is the same
    job; any change of a value is not, and the 409 names where."""
    from gateway.intake.service import differences, meaning_hash

    job = speaker_job(3, tags=["a", "b"], expires_at="2030-01-01T00:00:00Z")

    def shuffled(value):
        if isinstance(value, dict):
            items = list(value.items())
            seed.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        return [shuffled(v) for v in value] if isinstance(value, list) else value

    retried = json.dumps(shuffled(job), indent=indent, separators=None if indent else (",", ":")).encode()
    assert meaning_hash(retried) == meaning_hash(json.dumps(job).encode())
    changed = json.loads(retried)
    changed["recipients"][2]["attributes"]["first_name"] = "Other"
    assert meaning_hash(json.dumps(changed).encode()) != meaning_hash(retried)
    assert differences(job, changed) == ["$.recipients[2].attributes.first_name"]


async def test_idempotency_a_reserialized_retry_replays(api) -> None:
    job = speaker_job(2)
    first = await api.post(json.dumps(job).encode(), headers={"Idempotency-Key": "k-3"})
    again = await api.post(
        json.dumps(dict(reversed(job.items())), indent=2).encode(), headers={"Idempotency-Key": "k-3"}
    )
    assert first[0] == again[0] == 202 and first[1] == again[1]


async def test_idempotency_concurrent_requests_make_one_job(api) -> None:
    job = speaker_job(2)
    replies = await asyncio.gather(*(api.post(job, headers={"Idempotency-Key": "race"}) for _ in range(10)))
    assert {r[0] for r in replies} == {202}
    assert len({r[1]["job_id"] for r in replies}) == 1


async def test_idempotency_keys_expire(start, tmp_path) -> None:
    from gateway.clock import FakeClock

    clock = FakeClock()
    running = await start(make_config(tmp_path, intake={"idempotency_ttl": "1h"}), clock=clock)
    job = speaker_job(1)
    first = await running.post(job, headers={"Idempotency-Key": "k"})
    clock.advance(3601)
    second = await running.post(dict(job, campaign="other"), headers={"Idempotency-Key": "k"})
    assert second[0] == 202 and second[1]["job_id"] != first[1]["job_id"]
    assert await running.gateway.store.purge_expired(clock.now() + 7200) == 1


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Bearer", API_KEY])
async def test_auth_required(api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession(api.server.url) as anon:
        async with anon.post("/v1/jobs", json=speaker_job(1), headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await r.json()
        async with anon.get("/v1/jobs/x", headers=headers) as r:
            assert r.status == 401


async def test_public_endpoints_need_no_key(api) -> None:
    async with aiohttp.ClientSession(api.server.url) as anon:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            async with anon.get(path) as r:
                assert r.status == 200, path


async def test_backpressure_429_with_retry_after(start, receiver, tmp_path) -> None:
    receiver.latency = 0.3
    running = await start(make_config(tmp_path, receiver.url, intake={"max_inflight_recipients": 4, "retry_after": 3}))
    first = await running.post(speaker_job(4))
    assert first[0] == 202
    busy = await running.post(speaker_job(1))
    assert busy[0] == 429
    assert busy[2]["Retry-After"] == "3"
    await running.wait(first[1]["job_id"])
    after = await running.post(speaker_job(1))
    assert after[0] == 202
    assert running.gateway.admission.inflight <= 4


async def test_readyz_reports_store_and_channels(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    async with running.http.get("/readyz") as r:
        body = await r.json()
        assert r.status == 200
        assert body == {"status": "ready", "store": True, "accepting": True, "channels": {"speaker": {"state": "up"}}}
    running.gateway.accepting = False
    async with running.http.get("/readyz") as r:
        assert r.status == 503


async def test_metrics_prometheus_text(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    _, body, _ = await running.post(speaker_job(2))
    await running.wait(body["job_id"])
    await running.post(b"nope")
    async with running.http.get("/metrics") as r:
        text = await r.text()
    assert "gateway_jobs_accepted_total 1" in text
    assert 'gateway_decisions_total{channel="speaker",outcome="sent"} 2' in text
    assert 'gateway_jobs_rejected_total{status="400"} 1' in text
    assert "gateway_queue_depth 0" in text
    assert 'gateway_delivery_latency_seconds_count{channel="speaker"} 2' in text
    assert "# TYPE gateway_delivery_latency_seconds histogram" in text


async def test_metrics_label_only_configured_channels(start, receiver, tmp_path) -> None:
    """Jobs may name any channel; each new name must not become another time series."""
    running = await start(make_config(tmp_path, receiver.url))
    for n in range(3):
        _, body, _ = await running.post(speaker_job(1, channels=["speaker", f"made-up-{n}", f"other-{n}"]))
        await running.wait(body["job_id"])
    async with running.http.get("/metrics") as r:
        text = await r.text()
    assert "made-up" not in text and "other-" not in text
    assert 'gateway_decisions_total{channel="other",outcome="suppressed"} 6' in text


async def test_openapi_describes_the_job_schema(api) -> None:
    async with api.http.get("/openapi.json") as r:
        spec = await r.json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz", "/metrics"}
    job = spec["components"]["schemas"]["Job"]
    assert set(job["required"]) == {"campaign", "channels", "variants", "recipients"}
    assert job["additionalProperties"] is False


def test_refuses_non_loopback_without_keys(monkeypatch) -> None:
    monkeypatch.delenv("GATEWAY_API_KEYS", raising=False)
    config = GatewayConfig()
    with pytest.raises(ConfigError) as err:
        keys_for(config, "0.0.0.0")
    assert "server.host" in err.value.problems[0]
    assert keys_for(config, "127.0.0.1") == []
    assert keys_for(config, "::1") == []
    monkeypatch.setenv("GATEWAY_API_KEYS", "a, b")
    assert [(k.secret.reveal(), k.tenant) for k in keys_for(config, "0.0.0.0")] == [("a", "default"), ("b", "default")]


async def test_loopback_without_keys_is_open_to_local_json_requests_only(tmp_path, monkeypatch) -> None:
    """Keyless mode: a JSON request to a loopback Host is served; a cross-site form post
    (text/plain) and a request naming another host (DNS rebinding) are not."""
    monkeypatch.delenv("GATEWAY_TEST_API_KEYS", raising=False)
    config = make_config(tmp_path)
    server = await start_server(config)
    try:
        async with aiohttp.ClientSession(server.url) as anon:
            async with anon.post("/v1/jobs", json=speaker_job(1)) as r:
                assert r.status == 202
            async with anon.post(
                "/v1/jobs", data=json.dumps(speaker_job(1)), headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"
            async with anon.get("/v1/jobs/x", headers={"Host": "attacker.example"}) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden"
    finally:
        await server.stop()


def test_secrets_never_show_in_repr() -> None:
    from gateway.config import Secret

    secret = Secret("whsec_c2VjcmV0")
    assert "c2VjcmV0" not in repr(secret) and "c2VjcmV0" not in str(secret) and "c2VjcmV0" not in f"{secret}"


async def test_store_failure_is_503_never_202(api) -> None:
    await api.gateway.store.close()  # the real write path now raises StoreUnavailable
    status, body, headers = await api.post(speaker_job(2))
    assert status == 503 and body["error"] == "store_unavailable"
    assert headers["Retry-After"]
    assert api.gateway.admission.inflight == 0


async def test_openapi_describes_every_route(api) -> None:
    """The spec stays in step with the router."""
    from gateway.intake.api import make_app

    app = make_app(api.gateway, [])
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()  # type: ignore[union-attr]
        if r.method not in ("HEAD", "*")  # the catch-all answers JSON 404s and 405s
    }
    async with api.http.get("/openapi.json") as r:
        spec = await r.json()
    described = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert routes == described
