"""Status callbacks: signed events from a durable outbox written with the decisions, in
order per job, at least once with stable ids, on both stores; and through `kill -9`."""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.clock import FakeClock
from gateway.model.delivery import InvalidToken, Sent
from gateway.testing import Fault, WebhookReceiver, new_secret
from tests.conftest import API_KEY, speaker_job
from tests.policy.test_policy_pipeline import Provider, at, push_job, quiet, started
from tests.test_crash import serve, write_config
from tests.waiting import until


def callbacks(url: str, **values: Any) -> dict[str, Any]:
    return {
        "callbacks": {
            "default": {"url": f"{url}/hooks/upstream", "secret": {"env": "GATEWAY_TEST_CALLBACK_SECRET"}, **values}
        }
    }


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The upstream endpoint; tests ask for it before `start`, so it stops after the gateway
    (whose sender keeps a connection to it open)."""
    secret = new_secret()
    monkeypatch.setenv("GATEWAY_TEST_CALLBACK_SECRET", secret)
    async with WebhookReceiver(secret) as receiver:
        yield receiver


async def test_decisions_dead_tokens_and_the_end_arrive_signed_in_order(upstream, start, tmp_path, both_stores) -> None:
    Provider.received = []
    Provider.answer = staticmethod(lambda d: InvalidToken("Unregistered") if d.user_id == "ben" else Sent())
    try:
        running = await started(
            start,
            tmp_path,
            FakeClock(at("2026-11-28T12:00:00Z")),
            pipeline={"batch_size": 2},
            **callbacks(upstream.url),
            **both_stores,
        )
        _, body, _ = await running.post(push_job(["ana", "ben", "cat"], category="transactional"))
        await running.wait(body["job_id"])
        await until(lambda: upstream.events("job.completed"), what="the job.completed callback")
    finally:
        Provider.answer = staticmethod(lambda d: Sent())
    events = upstream.events()
    assert not upstream.rejected  # every one signed with the tenant's secret
    # In the order written: a batch's decisions, then its dead tokens; batches as they were
    # recorded (they may end out of order); the end last.
    types = [e["type"] for e in events]
    assert sorted(types[:-1]) == ["decisions", "decisions", "token.invalidated"] and types[-1] == "job.completed"
    assert types.index("token.invalidated") > types.index("decisions")
    decided = sorted((d["user_id"], d["outcome"]) for e in upstream.events("decisions") for d in e["data"]["decisions"])
    assert decided == [("ana", "sent"), ("ben", "invalid_token"), ("cat", "sent")]
    assert upstream.events("token.invalidated")[0]["data"]["user_id"] == "ben"
    assert {e["data"]["job_id"] for e in events} == {body["job_id"]}
    assert all(e["id"].startswith("evt_") and e["created_at"].endswith("Z") for e in events)

    # Delivered events leave the outbox (a write after the endpoint's answer: waited for).
    async def outbox_empty() -> bool:
        return await running.gateway.store.outbox("default", 10) == []

    await until(outbox_empty, what="the delivered events to leave the outbox")


async def test_a_cancelled_waiting_job_and_an_opt_out(upstream, start, tmp_path, both_stores) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet(), **callbacks(upstream.url), **both_stores)
    _, body, _ = await running.post(push_job(["ana"]))
    await running.wait(body["job_id"], states=("waiting",))
    async with running.http.post(f"/v1/jobs/{body['job_id']}/cancel") as r:
        assert r.status == 200
    await until(lambda: upstream.events("job.cancelled"), what="the job.cancelled callback")
    deferred, cancelled = [e["data"]["decisions"][0] for e in upstream.events("decisions")]
    assert (deferred["outcome"], cancelled["reason"]) == ("deferred", "cancelled")
    gw = running.gateway
    outbox = gw.pipeline.subscriptions.opt_out("default", "ana@example.com", "c", clock.now())
    assert outbox is not None
    await gw.store.append_outbox(outbox)
    await until(lambda: upstream.events("opt_out.recorded"), what="the opt_out.recorded callback")
    assert upstream.events("opt_out.recorded")[0]["data"] == {"address": "ana@example.com", "campaign": "c"}


async def test_a_failing_endpoint_holds_events_in_order_and_gets_them_later(upstream, start, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "gateway.callbacks")
    failing = {"on": True}
    upstream.fault = lambda payload, attempt: Fault(503) if failing["on"] else None
    running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")), **callbacks(upstream.url))
    first = [(await running.post(push_job([f"u{n}"], category="transactional")))[1]["job_id"] for n in range(3)]
    for job_id in first:
        await running.wait(job_id)
    await until(lambda: sum(upstream.attempts.values()) >= 2, what="a few failed attempts")
    assert upstream.events() == []
    failing["on"] = False
    await until(
        lambda: len(upstream.events("job.completed")) == 3, timeout=20, what="every event, once the endpoint is back"
    )
    order = [(e["data"]["job_id"], e["type"]) for e in upstream.events()]
    assert order == [(j, t) for j in first for t in ("decisions", "job.completed")]
    # Said when it starts failing and when it recovers, not per attempt (the clock stood still).
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.callbacks"]
    assert len(said) == 2, said
    assert said[0].startswith("status callbacks of tenant default: the endpoint fails (HTTP 503; 1 attempts in 0s)")
    assert said[1].startswith("status callbacks of tenant default: the endpoint takes events again after ")


@pytest.mark.timeout(90)
async def test_kill_9_during_delivery_loses_no_event(tmp_path: Path, upstream) -> None:
    """A `gateway serve` with callbacks to a slow endpoint is killed with SIGKILL while
    delivering; after a restart every event arrives, a redelivery only with the same id."""
    hub = WebhookReceiver(os.environ["GATEWAY_TEST_CALLBACK_SECRET"])
    await hub.start()
    upstream.latency = 0.05
    extra = f"""
[callbacks.default]
url = "{upstream.url}/hooks/upstream"
secret = {{ env = "GATEWAY_TEST_CALLBACK_SECRET" }}
"""
    config = write_config(tmp_path, hub.url, extra=extra)
    try:
        first = await serve(config, hub.secret or "")
        job_id = await _post(first.url, speaker_job(200))  # 10 batches: 10 decision events, then the end
        await until(lambda: len(upstream.attempts) >= 3, timeout=30, what="callbacks being delivered")
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        second = await serve(config, hub.secret or "")
        try:
            await until(lambda: upstream.events("job.completed"), timeout=40, what="the job.completed callback")
        finally:
            second.proc.send_signal(signal.SIGTERM)
            await second.proc.wait()
    finally:
        await hub.stop()
    decided = Counter(d["recipient"] for e in upstream.events("decisions") for d in e["data"]["decisions"])
    assert sorted(decided) == list(range(200)) and set(decided.values()) == {1}, "a decision missing or sent twice"
    assert {e["data"]["job_id"] for e in upstream.events()} == {job_id}
    copies = [r.copies for r in upstream.received.values()]
    assert all(c >= 1 for c in copies)  # redeliveries (if any) came with the id of the first


async def _post(url: str, job: dict[str, Any]) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.post(f"{url}/v1/jobs", json=job) as r:
            assert r.status == 202, await r.text()
            return (await r.json())["job_id"]
