"""Routing, policy reasons and result aggregation through the real pipeline.

The channels here are scripted providers registered as plugins (the same seam a
third-party channel uses); the pipeline, policy, retrier and store are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from gateway.channel import Channel
from gateway.clock import FakeClock
from gateway.hookspecs import hookimpl
from gateway.model.delivery import Delivery, InvalidToken, PermanentFailure, Result, Sent, TransientFailure
from tests.conftest import epoch, make_config


def scripted(name: str, respond: Callable[[Delivery], Result], calls: list[Delivery]) -> type[Channel]:
    class Scripted(Channel):
        content_kind = "push"
        subscription_group = "push"
        requires_config = False

        async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
            calls.extend(deliveries)
            return [respond(d) for d in deliveries]

    Scripted.name = name
    return Scripted


class Channels:
    def __init__(self, *classes: type[Channel]):
        self.classes = classes

    @hookimpl
    def register_channels(self):
        return list(self.classes)


def recipient(user: str, devices: list[str], push: str = "opted_in", **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user,
        "subscriptions": {"push": push},
        "devices": [{"channel": c, "token": tok} for c, tok in (d.split(":") for d in devices)],
        **extra,
    }


def job(recipients: list[dict[str, Any]], channels: list[str], routing: str = "all", **extra: Any) -> dict[str, Any]:
    return {
        "campaign": "c",
        "channels": channels,
        "routing": routing,
        "variants": [
            {
                "name": "default",
                "content": {
                    "push": {
                        "title": "Hi {{ attributes.first_name | default: 'you' }}",
                        "body": "{{ properties.order }} shipped",
                    }
                },
            }
        ],
        "recipients": recipients,
        **extra,
    }


def by_key(decisions: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, str | None]]:
    return {(d["user_id"], d["channel"]): (d["outcome"], d.get("reason")) for d in decisions}


@pytest.fixture
def provider_calls() -> dict[str, list[Delivery]]:
    return {"alpha": [], "beta": []}


async def test_routing_first_falls_back_and_stops_at_success(start, tmp_path, provider_calls) -> None:
    def alpha(d: Delivery) -> Result:
        return PermanentFailure("rejected") if d.user_id == "u2" else Sent()

    classes = (
        scripted("alpha", alpha, provider_calls["alpha"]),
        scripted("beta", lambda d: Sent(), provider_calls["beta"]),
    )
    running = await start(make_config(tmp_path), extra_plugins=(Channels(*classes),))
    recipients = [
        recipient("u1", ["alpha:a1", "beta:b1"], properties={"order": "1"}),  # alpha works
        recipient("u2", ["alpha:a2", "beta:b2"], properties={"order": "2"}),  # alpha fails permanently
        recipient("u3", ["beta:b3"], properties={"order": "3"}),  # no alpha device
    ]
    _, body, _ = await running.post(job(recipients, ["alpha", "beta"], routing="first"))
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"]) == {
        ("u1", "alpha"): ("sent", None),
        ("u1", "beta"): ("suppressed", "fallback_not_needed"),
        ("u2", "alpha"): ("failed", "rejected"),
        ("u2", "beta"): ("sent", None),
        ("u3", "alpha"): ("suppressed", "no_device"),
        ("u3", "beta"): ("sent", None),
    }
    assert sorted(d.user_id for d in provider_calls["beta"]) == ["u2", "u3"]


async def test_routing_all_sends_every_device_and_aggregates(start, tmp_path, provider_calls) -> None:
    def alpha(d: Delivery) -> Result:
        return {"dead": InvalidToken("unregistered"), "bad": PermanentFailure("payload")}.get(d.to.token, Sent())

    running = await start(
        make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", alpha, provider_calls["alpha"])),)
    )
    recipients = [
        recipient("u1", ["alpha:ok", "alpha:dead"], properties={"order": "1"}),
        recipient("u2", ["alpha:dead"], properties={"order": "2"}),
        recipient("u3", ["alpha:bad", "alpha:dead"], properties={"order": "3"}),
    ]
    _, body, _ = await running.post(job(recipients, ["alpha"]))
    done = await running.wait(body["job_id"])
    decisions = {d["user_id"]: d for d in done["decisions"]}
    assert decisions["u1"]["outcome"] == "sent" and decisions["u1"]["detail"] == "1 of 2 devices"
    assert decisions["u1"]["invalid_tokens"] == ["dead"]
    assert (decisions["u2"]["outcome"], decisions["u2"]["reason"]) == ("invalid_token", "unregistered")
    assert (decisions["u3"]["outcome"], decisions["u3"]["reason"]) == ("failed", "payload")
    assert decisions["u3"]["invalid_tokens"] == ["dead"]
    assert len(provider_calls["alpha"]) == 5
    assert len({d.id for d in provider_calls["alpha"]}) == 5


async def test_policy_reasons(start, tmp_path, provider_calls) -> None:
    running = await start(
        make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", lambda d: Sent(), provider_calls["alpha"])),)
    )
    recipients = [
        recipient("unsub", ["alpha:1"], push="unsubscribed", properties={"order": "1"}),
        {"user_id": "nostate", "devices": [{"channel": "alpha", "token": "2"}], "properties": {"order": "2"}},
        recipient("nodevice", [], properties={"order": "3"}),
        recipient("nodata", ["alpha:4"]),  # properties.order is missing and has no default
    ]
    _, body, _ = await running.post(job(recipients, ["alpha", "gone"]))
    done = await running.wait(body["job_id"])
    got = by_key(done["decisions"])
    assert got[("unsub", "alpha")] == ("suppressed", "unsubscribed")
    assert got[("nostate", "alpha")] == ("suppressed", "not_subscribed")
    assert got[("nodevice", "alpha")] == ("suppressed", "no_device")
    assert got[("nodata", "alpha")] == ("suppressed", "missing_data")
    assert all(
        got[(u, "gone")] == ("suppressed", "channel_unavailable") for u in ("unsub", "nostate", "nodevice", "nodata")
    )
    nodata = next(d for d in done["decisions"] if d["user_id"] == "nodata" and d["channel"] == "alpha")
    # nothing was chosen: the detail names the default variant, the field and the path
    assert nodata["detail"] == "default: content.push.body: properties.order is undefined"
    assert "variant" not in nodata
    assert not provider_calls["alpha"]


async def test_transactional_skips_subscription_state(start, tmp_path, provider_calls) -> None:
    running = await start(
        make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", lambda d: Sent(), provider_calls["alpha"])),)
    )
    recipients = [recipient("u", ["alpha:1"], push="unsubscribed", properties={"order": "9"})]
    _, body, _ = await running.post(job(recipients, ["alpha"], category="transactional"))
    done = await running.wait(body["job_id"])
    assert done["decisions"][0]["outcome"] == "sent"
    assert provider_calls["alpha"][0].content.body == "9 shipped"
    assert provider_calls["alpha"][0].content.title == "Hi you"


async def test_expired_job_sends_nothing(start, tmp_path, provider_calls) -> None:
    clock = FakeClock(start=2_000_000_000)
    running = await start(
        make_config(tmp_path),
        clock=clock,
        extra_plugins=(Channels(scripted("alpha", lambda d: Sent(), provider_calls["alpha"])),),
    )
    recipients = [recipient("u", ["alpha:1"], properties={"order": "1"})]
    _, body, _ = await running.post(job(recipients, ["alpha"], expires_at="2030-01-01T00:00:00Z"))
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"])[("u", "alpha")] == ("suppressed", "expired")


async def test_retry_never_outlives_expiry(start, tmp_path, provider_calls) -> None:
    clock = FakeClock(start=1_900_000_000)
    running = await start(
        make_config(tmp_path),
        clock=clock,
        extra_plugins=(
            Channels(scripted("alpha", lambda d: TransientFailure("busy", retry_after=120), provider_calls["alpha"])),
        ),
    )
    recipients = [recipient("u", ["alpha:1"], properties={"order": "1"})]
    _, body, _ = await running.post(job(recipients, ["alpha"], expires_at="2030-03-17T17:47:00Z"))
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"])[("u", "alpha")] == ("failed", "retries_exhausted")
    assert len(provider_calls["alpha"]) == 1  # the retry would land after expires_at


async def test_a_raising_channel_is_contained(start, tmp_path, provider_calls) -> None:
    class Broken(Channel):
        name = "broken"
        content_kind = "push"
        subscription_group = "push"
        requires_config = False

        async def send_batch(self, deliveries):
            raise RuntimeError("plugin bug")

    running = await start(
        make_config(tmp_path),
        extra_plugins=(Channels(Broken, scripted("alpha", lambda d: Sent(), provider_calls["alpha"])),),
    )
    recipients = [recipient("u", ["alpha:1", "broken:2"], properties={"order": "1"})]
    _, body, _ = await running.post(job(recipients, ["broken", "alpha"]))
    done = await running.wait(body["job_id"])
    got = by_key(done["decisions"])
    assert got[("u", "alpha")] == ("sent", None)
    # A raise: which deliveries went out is unknown, so none is retried (no doubles), and
    # it is the plugin's fault, not the provider's (no breaker).
    assert got[("u", "broken")] == ("failed", "channel_error")
    assert done["decisions"][0]["detail"] == "RuntimeError: plugin bug"
    assert not running.gateway.pipeline.dispatcher.any_open("broken")


async def test_retries_stop_at_the_delivery_time_budget(start, tmp_path, provider_calls) -> None:
    """Retries are governed by time, not counts: past the in-memory window a retry waits
    in the store (deferred: retrying, with its count and last error), is released when
    due, and the one that would start past max_delivery_time is not made."""
    clock = FakeClock(start=1_900_000_000)
    config = make_config(tmp_path, delivery={"max_delivery_time": "90s"})
    running = await start(
        config,
        clock=clock,
        extra_plugins=(
            Channels(scripted("alpha", lambda d: TransientFailure("busy", retry_after=60), provider_calls["alpha"])),
        ),
    )
    _, body, _ = await running.post(job([recipient("u", ["alpha:1"], properties={"order": "1"})], ["alpha"]))
    waiting = (await running.wait(body["job_id"], states=("waiting",)))["decisions"][0]
    assert (waiting["outcome"], waiting["reason"], epoch(waiting["until"])) == ("deferred", "retrying", 1_900_000_060)
    assert "attempt 1 failed (busy)" in waiting["detail"]
    clock.advance(60)
    assert await running.gateway.scheduler.run_due() == 1
    done = await running.wait(body["job_id"])
    decision = done["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("failed", "retries_exhausted")
    assert "2 attempts" in decision["detail"] and "max_delivery_time" in decision["detail"]
    assert len(provider_calls["alpha"]) == 2  # at 0 s and 60 s; a third at 120 s would pass 90 s


async def test_a_recipient_that_cannot_be_planned_is_a_decision_not_a_dead_job(start, tmp_path, provider_calls) -> None:
    """Whatever planning one recipient raises (here a plugin's `destinations` meeting data it
    did not expect) becomes `failed: internal_error` for that recipient; the rest of its
    batch and of the job go out."""

    class Picky(Channel):
        name = "picky"
        content_kind = "push"
        subscription_group = "push"
        requires_config = False

        def destinations(self, recipient):
            if recipient.user_id == "boom":
                raise KeyError("a field the plugin assumed")
            return [d for d in recipient.devices if d.channel == "picky"]

        async def send_batch(self, deliveries):
            provider_calls["alpha"].extend(deliveries)
            return [Sent() for _ in deliveries]

    running = await start(make_config(tmp_path), extra_plugins=(Channels(Picky),))
    recipients = [recipient(u, ["picky:1"], properties={"order": "1"}) for u in ("a", "boom", "c")]
    _, body, _ = await running.post(job(recipients, ["picky"]))
    done = await running.wait(body["job_id"])
    assert by_key(done["decisions"]) == {
        ("a", "picky"): ("sent", None),
        ("boom", "picky"): ("failed", "internal_error"),
        ("c", "picky"): ("sent", None),
    }
    assert sorted(d.user_id for d in provider_calls["alpha"]) == ["a", "c"]


async def test_a_job_that_fails_twice_at_one_place_is_finished_not_retried_forever(start, tmp_path) -> None:
    """A fault no recipient-level guard catches (the store refusing one batch of one job,
    again and again): the job runs once more, then its remaining recipients are decided
    `failed: internal_error` and it completes; other jobs are untouched."""
    from gateway.store.sqlite import SQLiteStore

    class RefusingStore(SQLiteStore):
        refused = 0

        async def record_batch(self, job_id, cursor, decisions, now, deferred=(), channels=(), finish=False, **more):
            if any(d.user_id == "poison" for d in decisions) and decisions[0].outcome != "failed":
                RefusingStore.refused += 1
                raise RuntimeError("a write this store cannot make")
            return await super().record_batch(job_id, cursor, decisions, now, deferred, channels, finish, **more)

    config = make_config(tmp_path, pipeline={"batch_size": 2, "workers": 1})
    running = await start(
        config,
        store=RefusingStore(f"{tmp_path}/refusing.db"),
        extra_plugins=(Channels(scripted("alpha", lambda d: Sent(), [])),),
    )
    recipients = [recipient(u, ["alpha:1"], properties={"order": "1"}) for u in ("a", "b", "poison", "d", "e")]
    _, body, _ = await running.post(job(recipients, ["alpha"]))
    done = await running.wait(body["job_id"])
    assert RefusingStore.refused == 2
    assert by_key(done["decisions"]) == {
        ("a", "alpha"): ("sent", None),
        ("b", "alpha"): ("sent", None),
        ("poison", "alpha"): ("failed", "internal_error"),
        ("d", "alpha"): ("failed", "internal_error"),
        ("e", "alpha"): ("failed", "internal_error"),
    }
    _, other, _ = await running.post(job([recipient("z", ["alpha:1"], properties={"order": "1"})], ["alpha"]))
    assert by_key((await running.wait(other["job_id"]))["decisions"]) == {("z", "alpha"): ("sent", None)}
