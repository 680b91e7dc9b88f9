"""One failing provider does not slow the others; in-flight limits hold across batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

import pytest

from gateway.channel import Channel, map_bounded
from gateway.clock import FakeClock
from gateway.hookspecs import hookimpl
from gateway.model.delivery import Delivery, Result, Sent, TransientFailure
from tests.conftest import epoch, make_config


class Slow(Channel):
    """A provider that hangs, then times out, until it is told it has recovered."""

    name = "slow"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    healthy: ClassVar[bool] = False
    attempts: ClassVar[int] = 0

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        Slow.attempts += len(deliveries)
        if Slow.healthy:
            return [Sent() for _ in deliveries]
        await asyncio.sleep(0.3)  # a real timeout's worth of waiting
        return [TransientFailure("timeout") for _ in deliveries]


class Fast(Channel):
    name = "fast"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    sent: ClassVar[list[str]] = []
    in_flight: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        async def one(delivery: Delivery) -> Result:
            Fast.in_flight += 1
            Fast.peak = max(Fast.peak, Fast.in_flight)
            await asyncio.sleep(0.001)
            Fast.in_flight -= 1
            Fast.sent.append(delivery.user_id)
            return Sent()

        return await map_bounded(deliveries, one, 100)


class Plugin:
    @hookimpl
    def register_channels(self):
        return [Slow, Fast]


def job(n: int, channels: list[str]) -> dict:
    return {
        "campaign": "c",
        "channels": channels,
        "category": "transactional",
        "variants": [{"name": "d", "content": {"push": {"title": "Hi"}}}],
        "recipients": [
            {"user_id": f"u{i}", "devices": [{"channel": c, "token": f"t{i}"} for c in channels]} for i in range(n)
        ],
    }


async def test_a_timing_out_provider_does_not_slow_another(start, tmp_path) -> None:
    Slow.healthy, Slow.attempts, Fast.sent = False, 0, []
    clock = FakeClock(1_800_000_000)
    config = make_config(
        tmp_path,
        pipeline={"batch_size": 5, "workers": 1},
        delivery={"breaker_failures": 3, "breaker_cooldown": "60s"},
    )
    running = await start(config, clock=clock, extra_plugins=(Plugin(),))
    _, body, _ = await running.post(job(40, ["slow", "fast"]))
    status = await running.wait(body["job_id"], states=("waiting",))
    assert sorted(Fast.sent) == sorted(f"u{i}" for i in range(40))
    # Each delivery was attempted at most once: the failures opened the circuit, and the
    # retries (and, on a loaded machine, batches planned after it opened) waited in the store
    # instead of the job waiting on the slow provider again. Counted, not timed.
    assert 3 <= Slow.attempts <= 40
    slow = [d for d in status["decisions"] if d["channel"] == "slow"]
    assert {(d["outcome"], d["reason"]) for d in slow} == {("deferred", "provider_unavailable")}
    assert {epoch(d["until"]) for d in slow} == {1_800_000_060}
    # Its backlog waited in the store; once the provider is back, it goes out.
    Slow.healthy = True
    clock.advance(61)
    while await running.gateway.scheduler.run_due():
        pass
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"] if d["channel"] == "slow"] == ["sent"] * 40


async def run_fast_jobs(start, tmp_path, per_channel: dict[str, int], jobs: int, plugin: object) -> None:
    """`jobs` jobs of 50 recipients on "fast", in batches of 50 on 4 workers."""
    Fast.sent, Fast.peak = [], 0
    config = make_config(
        tmp_path, pipeline={"batch_size": 50, "workers": 4}, delivery={"concurrency_per_channel": per_channel}
    )
    running = await start(config, extra_plugins=(plugin,))
    replies = await asyncio.gather(*(running.post(job(50, ["fast"])) for _ in range(jobs)))
    for _, body, _ in replies:
        await running.wait(body["job_id"])


async def test_in_flight_limit_holds_across_concurrent_batches(start, tmp_path) -> None:
    await run_fast_jobs(start, tmp_path, {"fast": 7}, 4, Plugin())
    assert len(Fast.sent) == 200
    assert Fast.peak <= 7


async def test_batches_share_the_in_flight_budget_instead_of_taking_turns(start, tmp_path) -> None:
    """A batch's slow tail leaves room for the next batch: with room for 100, two batches
    of 50 are in flight at once (one at a time, a provider sits idle at each batch's end)."""
    await run_fast_jobs(start, tmp_path, {"fast": 100}, 4, Plugin())
    assert len(Fast.sent) == 200
    assert 50 < Fast.peak <= 100


async def test_a_channels_default_concurrency_applies_unless_configured(start, tmp_path) -> None:
    class Narrow(Fast):
        default_concurrency = 5

    class NarrowPlugin:
        @hookimpl
        def register_channels(self):
            return [Narrow]

    for per_channel, limit in (({}, 5), ({"fast": 9}, 9)):
        await run_fast_jobs(start, tmp_path, per_channel, 2, NarrowPlugin())
        assert Fast.peak == limit


async def test_the_budget_is_first_come_first_served_and_survives_cancellation() -> None:
    from gateway.dispatch.budget import InFlight

    budget = InFlight(10)
    await budget.acquire(6)
    order: list[str] = []

    async def take(name: str, count: int) -> None:
        await budget.acquire(count)
        order.append(name)

    big = asyncio.ensure_future(take("big", 8))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(take("small", 2))  # would fit now, but waits behind the big one
    cancelled = asyncio.ensure_future(take("cancelled", 1))
    await asyncio.sleep(0)
    assert order == [] and budget.free == 4
    cancelled.cancel()
    await asyncio.sleep(0)
    budget.release(6)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.free == 0
    budget.release(10)
    assert budget.free == 10 and not budget.waiting

    # Cancelled while waiting, then released past before its task runs again: nothing is lost.
    await budget.acquire(10)
    late = asyncio.ensure_future(take("late", 5))
    await asyncio.sleep(0)
    late.cancel()
    budget.release(10)  # pops the cancelled waiter in the same turn
    with pytest.raises(asyncio.CancelledError):
        await late
    assert budget.free == 10 and not budget.waiting
