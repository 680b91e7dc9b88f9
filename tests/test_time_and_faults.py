"""What happens over time and under provider faults, through the real pipeline, store and
scheduler (scripted channels, a fake clock; the fake SMTP server where a real protocol
matters): retries governed by time, deferrals that carry their state and always end, no
head-of-line blocking, and the routing ladder going on after a released channel fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from gateway.channel import Channel, map_bounded
from gateway.clock import FakeClock
from gateway.model.delivery import Delivery, InvalidToken, PermanentFailure, Result, Sent, TransientFailure
from gateway.testing.fleet import FakeFleet
from tests.conftest import make_config
from tests.test_pipeline import Channels, by_key, job, recipient, scripted
from tests.waiting import until

T0 = 1_900_000_000


@pytest.fixture
def provider_calls() -> dict[str, list[Delivery]]:
    return {"alpha": [], "beta": []}


async def drain_scheduler(running: Any) -> None:
    while await running.gateway.scheduler.run_due():
        pass


# -- retries over time --------------------------------------------------------------------------
async def test_a_provider_down_for_five_minutes_delivers_everything_when_it_returns(start, tmp_path) -> None:
    """The SMTP relay is stopped: the in-memory retries end in `deferred: retrying`, the
    scheduler releases them again and again (the count and the first attempt go on), and
    once the relay is back every message goes out; nothing fails though the outage
    outlasts any attempt count."""
    fleet = FakeFleet(tmp_path / "fakes")
    await fleet.start()
    try:
        clock = FakeClock(T0)
        config = make_config(tmp_path)
        config.channels.update(fleet.channels_config(("email",), timeout="2s"))
        running = await start(config, clock=clock)
        port = fleet.smtp.port
        await fleet.smtp.stop()
        recipients = [{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(5)]
        variants = [{"name": "d", "content": {"email": {"subject": "Receipt", "text": "Thanks"}}}]
        _, body, _ = await running.post(
            {
                "campaign": "c",
                "category": "transactional",
                "channels": ["email"],
                "variants": variants,
                "recipients": recipients,
            }
        )
        status = await running.wait(body["job_id"], states=("waiting",))
        assert {(d["outcome"], d["reason"]) for d in status["decisions"]} == {("deferred", "retrying")}
        for _ in range(10):  # five minutes of an outage, released every 30 s
            clock.advance(30)
            await drain_scheduler(running)
        status = await running.status(body["job_id"], limit="100")
        assert {(d["outcome"], d["reason"]) for d in status["decisions"]} == {("deferred", "retrying")}
        assert all("attempt" in d["detail"] for d in status["decisions"])
        fleet.smtp.port = port
        await fleet.smtp.start()
        clock.advance(60)
        await drain_scheduler(running)
        done = await running.wait(body["job_id"])
        assert [d["outcome"] for d in done["decisions"]] == ["sent"] * 5
        assert sorted(fleet.copies("email")) == sorted(r["email"] for r in recipients)
    finally:
        await fleet.stop()


async def test_a_hold_past_expires_at_is_suppressed_expired_not_deferred(start, tmp_path, provider_calls) -> None:
    """The circuit opened with a cooldown that ends after the job expires: no release could
    come in time, so the decision says so now."""
    clock = FakeClock(T0)
    config = make_config(tmp_path, delivery={"breaker_failures": 1, "breaker_cooldown": "10m"})
    running = await start(
        config,
        clock=clock,
        extra_plugins=(Channels(scripted("alpha", lambda d: TransientFailure("down"), provider_calls["alpha"])),),
    )
    expires = "2030-03-17T17:51:40Z"  # T0 + 300 s, the circuit opens for 600 s
    _, body, _ = await running.post(
        job([recipient("u", ["alpha:1"], properties={"order": "1"})], ["alpha"], expires_at=expires)
    )
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("suppressed", "expired")
    assert "before expires_at" in decision["detail"]


# -- deferred messages carry their state ------------------------------------------------------
async def test_a_deferred_recipient_goes_on_with_its_waiting_devices_only(start, tmp_path, provider_calls) -> None:
    """One device is dead, the other's provider is failing: the recipient waits (retrying)
    with the dead device's answer carried; the release sends to the waiting device alone
    and the decision names the dead one."""
    healthy = {"now": False}

    def alpha(d: Delivery) -> Result:
        if d.to.token == "dead":
            return InvalidToken("unregistered")
        return Sent() if healthy["now"] else TransientFailure("busy", retry_after=60)

    clock = FakeClock(T0)
    running = await start(
        make_config(tmp_path), clock=clock, extra_plugins=(Channels(scripted("alpha", alpha, provider_calls["alpha"])),)
    )
    _, body, _ = await running.post(
        job([recipient("u", ["alpha:dead", "alpha:ok"], properties={"order": "1"})], ["alpha"])
    )
    waiting = (await running.wait(body["job_id"], states=("waiting",)))["decisions"][0]
    assert (waiting["outcome"], waiting["reason"]) == ("deferred", "retrying")
    healthy["now"] = True
    provider_calls["alpha"].clear()
    clock.advance(61)
    await drain_scheduler(running)
    done = (await running.wait(body["job_id"]))["decisions"][0]
    assert done["outcome"] == "sent" and done["invalid_tokens"] == ["dead"]
    assert [d.to.token for d in provider_calls["alpha"]] == ["ok"]
    assert provider_calls["alpha"][0].attempt == 2  # the count went on


async def test_routing_first_resumes_the_ladder_when_a_released_channel_fails(start, tmp_path, provider_calls) -> None:
    answers = {"alpha": TransientFailure("busy", retry_after=60)}
    clock = FakeClock(T0)
    running = await start(
        make_config(tmp_path),
        clock=clock,
        extra_plugins=(
            Channels(
                scripted("alpha", lambda d: answers["alpha"], provider_calls["alpha"]),
                scripted("beta", lambda d: Sent(), provider_calls["beta"]),
            ),
        ),
    )
    recipients = [recipient("u", ["alpha:a", "beta:b"], properties={"order": "1"})]
    _, body, _ = await running.post(job(recipients, ["alpha", "beta"], routing="first"))
    status = await running.wait(body["job_id"], states=("waiting",))
    assert by_key(status["decisions"]) == {
        ("u", "alpha"): ("deferred", "retrying"),
        ("u", "beta"): ("suppressed", "fallback_not_needed"),
    }
    answers["alpha"] = PermanentFailure("rejected")
    clock.advance(61)
    await drain_scheduler(running)
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"]) == {("u", "alpha"): ("failed", "rejected"), ("u", "beta"): ("sent", None)}
    assert [d.user_id for d in provider_calls["beta"]] == ["u"]


async def test_a_capped_channel_moves_the_ladder_on(start, tmp_path, provider_calls) -> None:
    classes = (
        scripted("alpha", lambda d: Sent(), provider_calls["alpha"]),
        scripted("beta", lambda d: Sent(), provider_calls["beta"]),
    )
    config = make_config(tmp_path, caps=[{"name": "no-alpha", "channels": ["alpha"], "limit": 0, "window": "1h"}])
    running = await start(config, extra_plugins=(Channels(*classes),))
    recipients = [recipient("u", ["alpha:a", "beta:b"], properties={"order": "1"})]
    _, body, _ = await running.post(job(recipients, ["alpha", "beta"], routing="first"))
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"]) == {("u", "alpha"): ("capped", "no-alpha"), ("u", "beta"): ("sent", None)}


# -- no head-of-line blocking -----------------------------------------------------------------
class Hanging(Channel):
    """A provider that does not answer until the test lets it."""

    name = "hanging"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    release: ClassVar[asyncio.Event]
    received: ClassVar[int] = 0

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        Hanging.received += len(deliveries)
        await Hanging.release.wait()
        return [Sent() for _ in deliveries]


class Slow(Channel):
    """Answers after 50 ms; counts how many requests it holds at once."""

    name = "slow"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    in_flight: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        async def one(delivery: Delivery) -> Result:
            Slow.in_flight += 1
            Slow.peak = max(Slow.peak, Slow.in_flight)
            await asyncio.sleep(0.05)
            Slow.in_flight -= 1
            return Sent()

        return await map_bounded(deliveries, one, 1000)  # no limit of its own: the core's budget holds


def two_channel_job(n: int, channels: list[str]) -> dict[str, Any]:
    return job(
        [recipient(f"u{i}", [f"{c}:{c}{i}" for c in channels], properties={"order": "1"}) for i in range(n)], channels
    )


async def test_a_hanging_provider_holds_up_no_other_channel(start, tmp_path, provider_calls) -> None:
    """Every batch of the job has a share on a provider that never answers: the other
    channel's decisions are all recorded meanwhile, batch after batch."""
    Hanging.release, Hanging.received = asyncio.Event(), 0
    config = make_config(tmp_path, pipeline={"batch_size": 10})
    running = await start(
        config, extra_plugins=(Channels(Hanging, scripted("alpha", lambda d: Sent(), provider_calls["alpha"])),)
    )
    _, body, _ = await running.post(two_channel_job(100, ["hanging", "alpha"]))

    async def alpha_decided() -> bool:
        decisions = (await running.status(body["job_id"], limit="1000"))["decisions"]
        return sum(d["channel"] == "alpha" and d["outcome"] == "sent" for d in decisions) == 100

    await until(alpha_decided, timeout=30)
    assert not Hanging.release.is_set() and Hanging.received > 0
    Hanging.release.set()
    done = await running.wait(body["job_id"])
    assert {(d["channel"], d["outcome"]) for d in done["decisions"]} >= {("alpha", "sent")}


async def test_a_slow_provider_is_kept_at_its_in_flight_budget(start, tmp_path) -> None:
    """Batches are pipelined: with batches of 5 and a budget of 20, the provider holds 20
    requests at once (not 5), so a job takes about recipients / budget round trips."""
    Slow.in_flight, Slow.peak = 0, 0
    config = make_config(tmp_path, pipeline={"batch_size": 5}, delivery={"concurrency_per_channel": {"slow": 20}})
    running = await start(config, extra_plugins=(Channels(Slow),))
    _, body, _ = await running.post(
        job([recipient(f"u{i}", [f"slow:t{i}"], properties={"order": "1"}) for i in range(100)], ["slow"])
    )
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent"] * 100
    assert Slow.peak == 20


async def test_releases_on_a_hanging_provider_hold_up_no_other_release(start, tmp_path, provider_calls) -> None:
    """Two jobs with messages due at once: one on a provider that hangs, one on a healthy
    one. The healthy release is settled while the other is still waiting."""
    Hanging.release, Hanging.received = asyncio.Event(), 0
    clock = FakeClock(T0)
    first = {"alpha": True, "hanging": True}

    class Flaky(Hanging):
        async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
            if first["hanging"]:
                first["hanging"] = False
                return [TransientFailure("busy", retry_after=60) for _ in deliveries]
            return await super().send_batch(deliveries)

    def alpha(d: Delivery) -> Result:
        if first["alpha"]:
            first["alpha"] = False
            return TransientFailure("busy", retry_after=60)
        return Sent()

    running = await start(
        make_config(tmp_path),
        clock=clock,
        extra_plugins=(Channels(Flaky, scripted("alpha", alpha, provider_calls["alpha"])),),
    )
    _, stuck, _ = await running.post(job([recipient("u1", ["hanging:h"], properties={"order": "1"})], ["hanging"]))
    _, healthy, _ = await running.post(job([recipient("u2", ["alpha:a"], properties={"order": "1"})], ["alpha"]))
    await running.wait(stuck["job_id"], states=("waiting",))
    await running.wait(healthy["job_id"], states=("waiting",))
    clock.advance(61)
    releasing = asyncio.create_task(running.gateway.scheduler.run_due())
    await running.wait(healthy["job_id"])
    assert not releasing.done()
    Hanging.release.set()
    await releasing
    await running.wait(stuck["job_id"])
