"""The gateway on the Redis store: caps, deferred delivery, and reads from another gateway."""

from __future__ import annotations

import asyncio
import uuid

from gateway.clock import FakeClock
from tests.conftest import make_config
from tests.policy.test_policy_pipeline import Provider, Providers, at, push_job, quiet


def redis_config(tmp_path, redis_url: str, prefix: str, **sections):
    return make_config(tmp_path, store={"url": redis_url, "key_prefix": prefix}, **sections)


async def test_racing_jobs_never_exceed_a_cap_on_redis(start, tmp_path, redis_url) -> None:
    Provider.received = []
    config = redis_config(tmp_path, redis_url, f"t{uuid.uuid4().hex[:8]}:", pipeline={"workers": 8, "batch_size": 3},
                          caps=[{"name": "promo", "tags": ["promo"], "limit": 3, "window": "7d"}])
    running = await start(config, clock=FakeClock(at("2026-11-28T12:00:00Z")), extra_plugins=(Providers(),))
    replies = await asyncio.gather(*(running.post(push_job(["ana", "ben", f"x{n}"])) for n in range(12)))
    for _, body, _ in replies:
        await running.wait(body["job_id"])
    per_user = Provider.per_user()
    assert per_user["ana"] == 3 and per_user["ben"] == 3


async def test_quiet_hours_release_and_a_second_gateway_reads_the_job(start, tmp_path, redis_url) -> None:
    Provider.received = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    a = await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    b = await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    _, body, _ = await a.post(push_job(["ana", "ben"]))
    waiting = await b.wait(body["job_id"], states=("waiting",))  # read through the other gateway
    assert {d["outcome"] for d in waiting["decisions"]} == {"deferred"}
    clock.t = at("2026-11-29T07:00:00Z")
    handled = await asyncio.gather(a.gateway.scheduler.run_due(), b.gateway.scheduler.run_due())
    assert sum(handled) == 2  # released once, by whichever gateway claimed it
    done = await a.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"]
    assert sorted(d.user_id for d in Provider.received) == ["ana", "ben"]


async def test_idempotency_key_shared_between_gateways(start, tmp_path, redis_url) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = await start(redis_config(tmp_path, redis_url, prefix), extra_plugins=(Providers(),))
    b = await start(redis_config(tmp_path, redis_url, prefix), extra_plugins=(Providers(),))
    job = push_job(["ana"], category="transactional")
    first = await a.post(job, headers={"Idempotency-Key": "k"})
    again = await b.post(job, headers={"Idempotency-Key": "k"})
    assert first[0] == again[0] == 202 and first[1]["job_id"] == again[1]["job_id"]
    assert (await b.post(dict(job, campaign="other"), headers={"Idempotency-Key": "k"}))[0] == 409
