"""The one-message path at intake: backpressure that counts queued jobs and their age, and
`POST /v1/jobs?wait=` answering with the decisions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from gateway.channel import Channel
from gateway.clock import FakeClock
from gateway.model.delivery import Delivery, Result, Sent
from gateway.pipeline import RunningJob
from gateway.runner import Admission, Runner
from tests.conftest import make_config, speaker_job
from tests.test_pipeline import Channels, job, recipient
from tests.waiting import until


class Gated(Channel):
    """Holds every request until the test opens the gate."""

    name = "gated"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    gate: ClassVar[asyncio.Event]

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        await Gated.gate.wait()
        return [Sent() for _ in deliveries]


def one(n: int) -> dict[str, Any]:
    return job([recipient(f"u{n}", [f"gated:d{n}"], properties={"order": "1"})], ["gated"])


async def gated(start, tmp_path, clock: FakeClock | None = None, **intake: Any):
    Gated.gate = asyncio.Event()
    config = make_config(tmp_path, pipeline={"workers": 1, "small_job_workers": 1}, intake=intake)
    kwargs = {"clock": clock} if clock else {}
    return await start(config, extra_plugins=(Channels(Gated),), **kwargs)


async def post(running, body: dict[str, Any], query: str = "") -> tuple[int, dict[str, Any], Any]:
    async with running.http.post(f"/v1/jobs{query}", data=json.dumps(body)) as r:
        return r.status, await r.json(), r.headers


async def test_queued_jobs_past_the_bound_get_429(start, tmp_path) -> None:
    running = await gated(start, tmp_path, max_queued_jobs=2, retry_after=4)
    first = await post(running, one(0))
    await until(lambda: first[1]["job_id"] in running.gateway.runner.active, what="the first job runs")
    assert [(await post(running, one(n)))[0] for n in (1, 2)] == [202, 202]  # two wait for the worker
    status, body, headers = await post(running, one(3))
    assert status == 429 and headers["Retry-After"] == "4"
    assert body["message"] == "2 jobs are waiting for a worker (limit 2); retry later"
    Gated.gate.set()
    await running.wait(first[1]["job_id"])
    await until(lambda: running.gateway.runner.backlog()[0] == 0, what="the queue drains")
    assert (await post(running, one(4)))[0] == 202


async def test_a_queued_job_older_than_the_bound_gets_429(start, tmp_path) -> None:
    clock = FakeClock()
    running = await gated(start, tmp_path, clock, max_queue_age="2s")
    first = await post(running, one(0))
    await until(lambda: first[1]["job_id"] in running.gateway.runner.active, what="the first job runs")
    assert (await post(running, one(1)))[0] == 202
    clock.advance(1.5)
    assert (await post(running, one(2)))[0] == 202  # the oldest has waited 1.5 s
    clock.advance(1.0)
    status, body, _ = await post(running, one(3))
    assert status == 429
    assert body["message"] == "the oldest queued job has waited 2.5s (limit 2s); retry later"
    Gated.gate.set()


async def test_a_job_of_one_batch_does_not_wait_behind_jobs_of_many(start, receiver, tmp_path) -> None:
    """Jobs of many batches hold every worker (here one, held by a gated job); a job of one
    batch has workers of its own and is decided meanwhile."""
    Gated.gate = asyncio.Event()
    config = make_config(tmp_path, receiver.url, pipeline={"workers": 1, "small_job_workers": 2, "batch_size": 2})
    running = await start(config, extra_plugins=(Channels(Gated),))
    many = job([recipient(f"u{n}", [f"gated:d{n}"], properties={"order": "1"}) for n in range(5)], ["gated"])
    status, big, _ = await post(running, many)
    assert status == 202
    await until(lambda: big["job_id"] in running.gateway.runner.active, what="the big job holds the worker")
    status, body, _ = await post(running, speaker_job(1), "?wait=10s")  # the speaker channel is not gated
    assert status == 200 and body["state"] == "completed"
    assert running.gateway.runner.has(big["job_id"])  # still held at the gate
    Gated.gate.set()
    await running.wait(big["job_id"])


async def test_wait_answers_200_with_the_decisions(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    status, body, headers = await post(running, speaker_job(2), "?wait=10s")
    assert status == 200
    assert headers["Location"] == f"/v1/jobs/{body['job_id']}"
    assert body["state"] == "completed" and body["counts"]["sent"] == 2
    assert [(d["user_id"], d["outcome"]) for d in body["decisions"]] == [("u0", "sent"), ("u1", "sent")]
    assert len(receiver.received) == 2  # sent before the answer


async def test_wait_past_its_time_answers_202_and_the_job_goes_on(start, tmp_path) -> None:
    running = await gated(start, tmp_path)
    status, body, _ = await post(running, one(0), "?wait=50ms")
    assert status == 202 and set(body) == {"job_id", "recipients"}
    Gated.gate.set()
    done = await running.wait(body["job_id"])
    assert done["counts"]["sent"] == 1


async def test_wait_is_cut_to_the_configured_bound(start, tmp_path) -> None:
    running = await gated(start, tmp_path, max_wait="100ms")
    started = time.monotonic()
    status, _, _ = await post(running, one(0), "?wait=600s")
    assert status == 202 and time.monotonic() - started < 60  # not ten minutes
    Gated.gate.set()


async def test_wait_on_an_idempotent_replay_answers_with_the_decisions(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    key = {"Idempotency-Key": "order-1"}
    async with running.http.post("/v1/jobs", data=json.dumps(speaker_job(1)), headers=key) as r:
        first = await r.json()
    await running.wait(first["job_id"])
    async with running.http.post("/v1/jobs?wait=5s", data=json.dumps(speaker_job(1)), headers=key) as r:
        assert r.status == 200
        assert (await r.json())["job_id"] == first["job_id"]
    assert len(receiver.received) == 1


@pytest.mark.parametrize("value", ["", "2", "abc", "-1s", "2 s", "1e3s", "10x"])
async def test_a_malformed_wait_is_400_with_its_path(start, tmp_path, value: str) -> None:
    running = await gated(start, tmp_path)
    status, body, _ = await post(running, one(0), f"?wait={value}")
    assert status == 400 and body["path"] == "wait"
    assert running.gateway.runner.load == 0  # nothing was accepted


class _Held:
    """A pipeline whose jobs run until the test lets them end."""

    batch_size = 10

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def run(self, item: Any, stopping: asyncio.Event) -> bool:
        await self.gate.wait()
        return True


def _running(n: int, size: int) -> RunningJob:
    return RunningJob(f"j{n}", SimpleNamespace(recipients=[None] * size), [], 0, 0.0)  # type: ignore[arg-type]


async def test_a_shared_queue_is_taken_from_as_each_lane_has_room() -> None:
    """On a shared queue (Redis) a job's size is known once it is taken: take no more than
    either lane has workers for; with the large lane full, jobs of one batch one at a time."""
    pipeline = _Held()
    runner = Runner(pipeline, Admission(10**6), 2, FakeClock(), small_job_workers=3)  # type: ignore[arg-type]
    try:
        assert runner.room() == 3  # min(2 + 1, 3 + 1)
        for n, size in enumerate([50, 50, 1, 1]):  # two large running, two small running
            runner.submit(_running(n, size))
        await until(lambda: len(runner.active) == 4, what="the jobs start")
        assert runner.room() == 1  # the large lane: one more may wait
        runner.submit(_running(5, 50))  # it waits for a large worker
        assert runner.room() == 1  # still one at a time: the next may be small
        runner.submit(_running(6, 50))  # it was large: two wait now
        assert runner.room() == 0
        pipeline.gate.set()
        await until(lambda: not runner.active and runner.load == 0, what="all done")
        assert runner.room() == 3
    finally:
        await runner.stop(1.0)
