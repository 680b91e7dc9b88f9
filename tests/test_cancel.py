"""Cancelling a job: messages waiting in the schedule are settled `suppressed: cancelled`
(keeping their deferral in their history), a running job stops at its next batch and the
rest of its recipients are `suppressed: cancelled`, again is the same answer, a completed
job is a 409; on Redis, a job running in another process stops too."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.clock import FakeClock
from gateway.testing import WebhookReceiver, new_secret
from tests.conftest import API_KEY, make_config, speaker_job
from tests.policy.test_policy_pipeline import Provider, at, push_job, quiet, started
from tests.test_crash import serve, write_config
from tests.waiting import until


async def _cancel(running: Any, job_id: str) -> tuple[int, Any]:
    async with running.http.post(f"/v1/jobs/{job_id}/cancel") as r:
        return r.status, await r.json()


async def test_a_waiting_jobs_schedule_is_cancelled(start, tmp_path, both_stores) -> None:
    Provider.received = []
    clock = FakeClock(at("2026-11-28T22:30:00Z"))  # 23:30 in Paris: quiet hours
    running = await started(start, tmp_path, clock, **quiet(), **both_stores)
    _, body, _ = await running.post(push_job(["ana", "ben"]))
    waiting = await running.wait(body["job_id"], states=("waiting",))
    status, view = await _cancel(running, body["job_id"])
    assert status == 200 and view["state"] == "cancelled" and view["counts"]["suppressed"] == 2
    done = await running.status(body["job_id"])
    for before, after in zip(waiting["decisions"], done["decisions"], strict=True):
        assert (after["outcome"], after["reason"]) == ("suppressed", "cancelled")
        assert after["history"] == [{k: before[k] for k in ("outcome", "reason", "detail", "until", "at")}]
    assert await _cancel(running, body["job_id"]) == (200, view)  # again: the same answer
    clock.t = at("2026-11-29T08:00:00Z")
    assert await running.gateway.scheduler.run_due() == 0 and Provider.received == []


async def test_a_completed_job_is_a_409_and_another_tenants_a_404(start, tmp_path, both_stores) -> None:
    running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")), **both_stores)
    _, body, _ = await running.post(push_job(["ana"], category="transactional"))
    await running.wait(body["job_id"])
    status, answer = await _cancel(running, body["job_id"])
    assert status == 409 and answer["error"] == "job_completed"
    assert (await _cancel(running, "no-such-job"))[0] == 404


async def test_a_running_job_stops_at_its_next_batch(start, tmp_path, both_stores) -> None:
    """A slow hub holds each batch for a while: the cancel lands while the first batches
    are under way; they finish, no other starts."""
    async with WebhookReceiver(new_secret(), latency=0.3) as receiver:
        os.environ["GATEWAY_TEST_SPEAKER_SECRET"] = receiver.secret or ""
        config = make_config(tmp_path, receiver.url, pipeline={"batch_size": 5, "workers": 1}, **both_stores)
        config.channels["speaker"]["concurrency"] = 5
        running = await start(config)
        _, body, _ = await running.post(speaker_job(40))
        await until(lambda: len(receiver.attempts) >= 1, what="a batch under way")
        status, view = await _cancel(running, body["job_id"])
        assert status == 200 and view["state"] in ("accepted", "running")
        done = await running.wait(body["job_id"], states=("cancelled",))
    outcomes = Counter((d["outcome"], d.get("reason")) for d in done["decisions"])
    sent = outcomes[("sent", None)]
    assert 1 <= sent < 40 and sent + outcomes[("suppressed", "cancelled")] == 40, outcomes
    assert len(receiver.received) == sent  # what was under way went; nothing after it


@pytest.mark.timeout(60)
async def test_a_job_running_in_another_process_stops(start, tmp_path, redis_url) -> None:
    """A `gateway serve` process runs the job; the cancel goes to another gateway on the
    same Redis, which only marks it: the runner learns it from the store at its next batch."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    secret = new_secret()
    async with WebhookReceiver(secret, latency=0.3) as receiver:
        os.environ["GATEWAY_TEST_SPEAKER_SECRET"] = secret
        # Each process its own consumer name (as deployment.md says): one must not resume the other's jobs.
        store = f'url = "{redis_url}"\nkey_prefix = "{prefix}"\ninstance = "worker"'
        worker = await serve(write_config(tmp_path, receiver.url, store=store), secret)
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
                async with http.post(f"{worker.url}/v1/jobs", json=speaker_job(100)) as r:
                    job_id = (await r.json())["job_id"]
            await until(lambda: len(receiver.attempts) >= 1, what="the worker sending")
            # Another gateway, started once the worker has the job: the cancel goes to it.
            shared = {"url": redis_url, "key_prefix": prefix, "instance": "other"}
            other = await start(make_config(tmp_path, receiver.url, store=shared))
            status, view = await _cancel(other, job_id)
            assert status == 200 and view["state"] in ("accepted", "running")
            done = await other.wait(job_id, states=("cancelled",), timeout=30)
        finally:
            worker.proc.send_signal(signal.SIGTERM)
            await worker.proc.wait()
    outcomes = Counter((d["outcome"], d.get("reason")) for d in done["decisions"])
    sent = outcomes[("sent", None)]
    assert 1 <= sent < 100 and sent + outcomes[("suppressed", "cancelled")] == 100, outcomes
    assert len(receiver.received) == sent
