"""Honest health: /readyz per channel, and metrics for what an operator watches (the
deferred backlog by reason, breaker state per provider, retries, queue age)."""

from __future__ import annotations

import re

from gateway.clock import FakeClock
from gateway.testing import Fault
from tests.conftest import make_config, speaker_job


async def _ready(running) -> tuple[int, dict]:
    async with running.http.get("/readyz") as r:
        return r.status, await r.json()


async def _metrics(running) -> str:
    async with running.http.get("/metrics") as r:
        return await r.text()


async def test_a_failing_provider_shows_in_readyz_and_metrics(start, receiver, tmp_path) -> None:
    receiver.fault = lambda payload, attempt: Fault(503)
    config = make_config(
        tmp_path,
        receiver.url,
        delivery={"breaker_failures": 3, "breaker_cooldown": "60s", "retry_window": "1s"},
        pipeline={"batch_size": 5, "workers": 1},
    )
    running = await start(config, clock=FakeClock(1_800_000_000))
    status, body = await _ready(running)
    assert (status, body["status"], body["channels"]) == (200, "ready", {"speaker": {"state": "up"}})

    _, job, _ = await running.post(speaker_job(10))
    await running.wait(job["job_id"], states=("waiting",))
    status, body = await _ready(running)
    # Still taking jobs (they wait in the store), and saying what is wrong.
    assert status == 200 and body["status"] == "degraded"
    assert body["channels"]["speaker"] == {"state": "open", "providers": {"home-hub": "open"}}

    text = await _metrics(running)
    assert 'gateway_breaker_open{channel="speaker",provider="home-hub"} 1' in text
    assert re.search(r'gateway_deferred_messages\{reason="provider_unavailable"\} [1-9]', text), text
    assert re.search(r'gateway_delivery_retries_total\{channel="speaker"\} [1-9]', text)
    assert "gateway_queue_oldest_age_seconds 0" in text and "gateway_jobs_queued 0" in text

    # The provider is back: the next release goes through and the circuit closes.
    receiver.fault = None
    running.gateway.clock.advance(61)
    while await running.gateway.scheduler.run_due():
        pass
    await running.wait(job["job_id"])
    status, body = await _ready(running)
    assert (status, body["status"], body["channels"]) == (200, "ready", {"speaker": {"state": "up"}})
    text = await _metrics(running)
    assert 'gateway_breaker_open{channel="speaker",provider="home-hub"} 0' in text
    assert "gateway_deferred_messages{" not in text


def test_the_grafana_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    import json
    from pathlib import Path

    from gateway.metrics import Metrics

    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b(gateway_[a-z_]+)\b", expr)}
    exported = Metrics().names()
    assert used and used <= exported, used - exported
    # Every series an operator needs for the issues of this page has a panel.
    for needed in ("gateway_breaker_open", "gateway_deferred_messages", "gateway_delivery_retries_total"):
        assert needed in used
