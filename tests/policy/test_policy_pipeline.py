"""Policy through the real pipeline, store and scheduler, on a fake clock.

Channels are scripted providers registered as plugins; what they receive is the truth the
caps are checked against, not the gateway's own counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

import pytest

from gateway.app import Gateway
from gateway.channel import Channel
from gateway.clock import FakeClock
from gateway.hookspecs import hookimpl
from gateway.model.delivery import Delivery, PermanentFailure, Result, Sent
from gateway.testing.examples import example_jobs
from tests.conftest import make_config


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Provider:
    """What the scripted providers received, and how they answer."""

    received: ClassVar[list[Delivery]] = []
    answer: ClassVar[Callable[[Delivery], Result]] = staticmethod(lambda d: Sent())

    @classmethod
    def per_user(cls) -> dict[str, int]:
        """Deliveries each user received: the truth caps are checked against."""
        counts: dict[str, int] = {}
        for delivery in cls.received:
            counts[delivery.user_id] = counts.get(delivery.user_id, 0) + 1
        return counts


def channel_class(name: str, kind: str, group: str) -> type[Channel]:
    class Scripted(Channel):
        content_kind = kind
        subscription_group = group
        requires_config = False

        def destinations(self, recipient):  # email: the address; others: devices
            if kind == "email":
                return [recipient.email] if recipient.email else []
            return [d for d in recipient.devices if d.channel == self.name]

        async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
            Provider.received.extend(deliveries)
            return [Provider.answer(d) for d in deliveries]

    Scripted.name = name
    return Scripted


class Providers:
    @hookimpl
    def register_channels(self):
        return [
            channel_class("apns", "push", "push"),
            channel_class("fcm", "push", "push"),
            channel_class("webpush", "push", "push"),
            channel_class("email", "email", "email"),
        ]


@pytest.fixture(autouse=True)
def reset_providers() -> None:
    Provider.received = []
    Provider.answer = staticmethod(lambda d: Sent())


async def started(start, tmp_path, clock: FakeClock, **sections: Any):
    return await start(make_config(tmp_path, **sections), clock=clock, extra_plugins=(Providers(),))


def push_job(users: list[str], tz: str = "Europe/Paris", devices: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "campaign": "c",
        "channels": ["apns"],
        "tags": ["promo"],
        "variants": [{"name": "d", "content": {"push": {"title": "Hi", "body": "News"}}}],
        "recipients": [
            {
                "user_id": u,
                "timezone": tz,
                "subscriptions": {"push": "opted_in"},
                "devices": [{"channel": "apns", "token": f"{n:02x}" * 32} for n in range(devices)],
            }
            for u in users
        ],
        **fields,
    }


def quiet(enabled: bool = True, **values: Any) -> dict[str, Any]:
    return {"quiet_hours": {"enabled": enabled, "spread": "0s", **values}}


async def test_cap_drop_counts_once_per_user_and_channel(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    running = await started(
        start, tmp_path, clock, caps=[{"name": "push-daily", "channels": ["push"], "limit": 1, "window": "24h"}]
    )
    _, first, _ = await running.post(push_job(["ana"], devices=3))
    done = await running.wait(first["job_id"])
    assert done["decisions"][0]["outcome"] == "sent" and len(Provider.received) == 3  # three iPhones, one count
    clock.advance(3600)
    _, second, _ = await running.post(push_job(["ana"]))
    done = await running.wait(second["job_id"])
    assert (done["decisions"][0]["outcome"], done["decisions"][0]["reason"]) == ("capped", "push-daily")
    assert len(Provider.received) == 3
    clock.advance(23 * 3600)  # the first send leaves the 24h window
    _, third, _ = await running.post(push_job(["ana"]))
    assert (await running.wait(third["job_id"]))["decisions"][0]["outcome"] == "sent"


async def test_cap_defer_waits_for_the_slot_then_sends(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    running = await started(
        start,
        tmp_path,
        clock,
        caps=[{"name": "hourly", "channels": ["apns"], "limit": 1, "window": "1h", "action": "defer"}],
    )
    _, first, _ = await running.post(push_job(["ana"]))
    await running.wait(first["job_id"])
    clock.advance(600)
    _, second, _ = await running.post(push_job(["ana"]))
    status = await running.wait(second["job_id"], states=("waiting",))
    decision = status["decisions"][0]
    assert (decision["outcome"], decision["reason"], decision["detail"]) == ("deferred", "frequency_cap", "hourly")
    assert decision["until"] == "2026-11-28T13:00:00Z"
    assert await running.gateway.scheduler.run_due() == 0  # not yet due
    clock.advance(3000)
    assert await running.gateway.scheduler.run_due() == 1
    status = await running.wait(second["job_id"])
    assert status["decisions"][0]["outcome"] == "sent" and len(Provider.received) == 2


async def test_permanent_failure_refunds_its_slot(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    running = await started(
        start, tmp_path, clock, caps=[{"name": "once", "channels": ["any"], "limit": 1, "window": "1d"}]
    )
    Provider.answer = staticmethod(lambda d: PermanentFailure("rejected"))
    _, first, _ = await running.post(push_job(["ana"]))
    assert (await running.wait(first["job_id"]))["decisions"][0]["outcome"] == "failed"
    Provider.answer = staticmethod(lambda d: Sent())
    _, second, _ = await running.post(push_job(["ana"]))
    assert (await running.wait(second["job_id"]))["decisions"][0]["outcome"] == "sent"


async def test_racing_jobs_never_exceed_a_cap(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    running = await started(
        start,
        tmp_path,
        clock,
        pipeline={"workers": 8, "batch_size": 3},
        caps=[{"name": "promo", "tags": ["promo"], "limit": 3, "window": "7d"}],
    )
    replies = await asyncio.gather(*(running.post(push_job(["ana", "ben", f"x{n}"])) for n in range(12)))
    for _, body, _ in replies:
        await running.wait(body["job_id"])
    per_user = Provider.per_user()
    assert per_user["ana"] == 3 and per_user["ben"] == 3  # checked against what providers got
    assert all(per_user[f"x{n}"] == 1 for n in range(12))


async def test_quiet_hours_defer_to_the_local_morning_and_release(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))  # 23:30 in Paris
    running = await started(start, tmp_path, clock, **quiet(spread="15m"))
    _, body, _ = await running.post(push_job(["ana"]))
    status = await running.wait(body["job_id"], states=("waiting",))
    decision = status["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("deferred", "quiet_hours")
    release = at("2026-11-29T07:00:00Z")  # 08:00 in Paris
    assert release <= at(decision["until"]) < release + 900  # spread over 15 minutes
    clock.t = at(decision["until"])
    assert await running.gateway.scheduler.run_due() == 1
    assert decision["variant"] == "d"  # a deferred decision says which variant it will carry
    deferred_at = decision["at"]
    status = await running.wait(body["job_id"])
    assert status["state"] == "completed" and status["decisions"][0]["outcome"] == "sent"
    assert at(status["decisions"][0]["at"]) >= release
    # The release did not overwrite the deferral: the decision keeps it, with its times.
    assert status["decisions"][0]["history"] == [
        {
            "outcome": "deferred",
            "reason": "quiet_hours",
            "detail": decision["detail"],
            "until": decision["until"],
            "at": deferred_at,
        }
    ]


@pytest.mark.parametrize(
    ("override", "category", "outcome", "reason"),
    [
        ("drop", "marketing", "suppressed", "quiet_hours"),
        ("ignore", "marketing", "sent", None),
        (None, "transactional", "sent", None),
    ],
)
async def test_quiet_hours_job_override_and_transactional(start, tmp_path, override, category, outcome, reason):
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet())
    fields: dict[str, Any] = {"category": category}
    if override:
        fields["quiet_hours"] = override
    _, body, _ = await running.post(push_job(["ana"], **fields))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision.get("reason")) == (outcome, reason)


async def test_quiet_hours_cover_push_not_email_by_default(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet())
    job = push_job(["ana"], channels=["apns", "email"])
    job["variants"][0]["content"]["email"] = {"subject": "News", "text": "Hello"}
    job["recipients"][0].update(email="ana@example.com", subscriptions={"push": "opted_in", "email": "subscribed"})
    _, body, _ = await running.post(job)
    decisions = {d["channel"]: d for d in (await running.wait(body["job_id"], states=("waiting",)))["decisions"]}
    assert decisions["apns"]["outcome"] == "deferred" and decisions["email"]["outcome"] == "sent"


async def test_invalid_zone_uses_the_fallback_and_says_so(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))  # 22:30 UTC: quiet in the UTC fallback
    running = await started(start, tmp_path, clock, **quiet())
    _, body, _ = await running.post(push_job(["ana"], tz="Not/AZone"))
    decision = (await running.wait(body["job_id"], states=("waiting",)))["decisions"][0]
    assert decision["flags"] == ["timezone_fallback"]
    assert decision["until"] == "2026-11-29T08:00:00Z"


async def test_deliver_at_local_then_released_once(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T06:00:00Z"))  # 07:00 in Paris
    running = await started(start, tmp_path, clock, **quiet(enabled=False))
    _, body, _ = await running.post(push_job(["ana"], deliver_at_local="09:00"))
    decision = (await running.wait(body["job_id"], states=("waiting",)))["decisions"][0]
    assert (decision["reason"], decision["until"]) == ("deliver_at_local", "2026-11-28T08:00:00Z")
    clock.t = at("2026-11-28T08:00:30Z")  # released a little late: not pushed to tomorrow
    await running.gateway.scheduler.run_due()
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"


async def test_deliver_at_local_during_its_own_minute_sends_now(start, tmp_path) -> None:
    """Posted at 09:00:20 in Paris for 09:00: now, not tomorrow (nor expired if the job
    expires today)."""
    clock = FakeClock(at("2026-11-28T08:00:20Z"))
    running = await started(start, tmp_path, clock, **quiet(enabled=False))
    _, body, _ = await running.post(push_job(["ana"], deliver_at_local="09:00", expires_at="2026-11-28T20:00:00Z"))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"


@pytest.mark.parametrize(
    ("rule", "expires", "detail"),
    [
        ({"limit": 0, "window": "1h"}, None, "the rule allows none: no slot will free"),
        ({"limit": 1, "window": "7d"}, "2026-11-28T18:00:00Z", "no slot frees before expires_at"),
    ],
)
async def test_a_cap_deferral_no_release_can_end_is_capped_up_front(start, tmp_path, rule, expires, detail) -> None:
    """Every deferral ends: one that could never be released in time is decided now."""
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    caps = [{"name": "r", "channels": ["apns"], "action": "defer", **rule}]
    running = await started(start, tmp_path, clock, caps=caps)
    fields = {"expires_at": expires} if expires else {}
    if rule["limit"]:
        _, first, _ = await running.post(push_job(["ana"], **fields))
        await running.wait(first["job_id"])
    _, body, _ = await running.post(push_job(["ana"], **fields))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"], decision["detail"]) == ("capped", "r", detail)


async def test_deferral_past_expiry_is_expired(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet())
    _, body, _ = await running.post(push_job(["ana"], expires_at="2026-11-29T06:00:00Z"))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("suppressed", "expired")
    assert "after expires_at" in decision["detail"]


async def test_release_checks_policy_again(start, tmp_path) -> None:
    """A cap that fills while a message waits out quiet hours caps it on release."""
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(
        start,
        tmp_path,
        clock,
        **quiet(),
        caps=[{"name": "one-a-day", "channels": ["any"], "limit": 1, "window": "24h"}],
    )
    _, night, _ = await running.post(push_job(["ana"]))
    await running.wait(night["job_id"], states=("waiting",))
    email = push_job(["ana"], channels=["email"], campaign="digest")
    email["variants"][0]["content"] = {"email": {"subject": "Digest", "text": "News"}}
    email["recipients"][0].update(email="ana@example.com", subscriptions={"email": "subscribed"})
    _, digest, _ = await running.post(email)  # email is not held by quiet hours: sent now
    assert (await running.wait(digest["job_id"]))["decisions"][0]["outcome"] == "sent"
    clock.t = at("2026-11-29T07:00:00Z")
    assert await running.gateway.scheduler.run_due() == 1
    decision = (await running.wait(night["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("capped", "one-a-day")
    assert [d.channel for d in Provider.received] == ["email"]


async def test_deferred_messages_survive_a_restart_and_release_once(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    config = make_config(tmp_path, **quiet())
    first = await start(config, clock=clock, extra_plugins=(Providers(),))
    _, body, _ = await first.post(push_job(["ana", "ben", "eve"]))
    await first.wait(body["job_id"], states=("waiting",))
    await first.http.close()
    await first.server.stop()
    # Two gateways on the same store race for the same due messages.
    clock.t = at("2026-11-29T08:00:00Z")
    a = Gateway(config, clock=clock, extra_plugins=(Providers(),), run_background=False)
    b = Gateway(config, clock=clock, extra_plugins=(Providers(),), run_background=False)
    await a.start()
    await b.start()
    try:
        handled = await asyncio.gather(a.scheduler.run_due(), b.scheduler.run_due())
        assert sum(handled) == 3
        assert sorted(d.user_id for d in Provider.received) == ["ana", "ben", "eve"]  # once each
        record = await a.store.get_job(body["job_id"])
        assert record is not None and record.state == "completed"
    finally:
        await a.stop()
        await b.stop()


async def test_preview_shows_policy_at_a_fixed_instant(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    running = await started(start, tmp_path, clock, **quiet())
    body = dict(example_jobs())["job-cart-reminder.json"]
    async with running.http.post("/v1/preview", data=body, params={"now": "2026-11-28T12:00:00Z"}) as r:
        result = await r.json()
    by = {(r["user_id"], c["channel"]): c for r in result["recipients"] for c in r["channels"]}
    assert (by[("u-1002", "email")]["outcome"], by[("u-1002", "email")]["reason"]) == ("suppressed", "unsubscribed")
    u1004 = by[("u-1004", "apns")]
    assert (u1004["outcome"], u1004["reason"], u1004["flags"]) == ("suppressed", "unsubscribed", ["timezone_fallback"])
    assert by[("u-1001", "apns")]["outcome"] == "would_send"  # 13:00 in Paris
    assert by[("u-1003", "webpush")]["outcome"] == "would_send"  # 19:00 in Bangkok: before 21:00
    async with running.http.post("/v1/preview", data=body, params={"now": "2026-11-28T15:00:00Z"}) as r:
        later = {(r["user_id"], c["channel"]): c for r in (await r.json())["recipients"] for c in r["channels"]}
    assert later[("u-1003", "webpush")]["outcome"] == "deferred"  # 22:00 in Bangkok
    assert later[("u-1003", "webpush")]["until"] == "2026-11-29T01:00:00Z"  # 08:00 in Bangkok
    assert not Provider.received


def test_check_config_reports_policy_errors(tmp_path) -> None:
    import subprocess
    import sys

    path = tmp_path / "g.toml"
    path.write_text(
        '[quiet_hours]\nfallback_timezone = "Mars/Olympus"\nstart = "25:00"\n[[caps]]\nname = "x"\nlimit = 2\n'
    )
    proc = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "quiet_hours.start" in proc.stderr
    path.write_text('[quiet_hours]\nfallback_timezone = "Mars/Olympus"\n[[caps]]\nname = "x"\nlimit = 2\n')
    proc = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True, text=True)
    assert "quiet_hours.fallback_timezone: not an IANA time zone" in proc.stderr
    assert "caps[0]: give exactly one of `window` or `calendar`" in proc.stderr


async def test_two_deferred_channels_of_one_recipient_are_both_released(start, tmp_path) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet())
    job = push_job(["ana"], channels=["apns", "fcm"])
    job["recipients"][0]["devices"].append({"channel": "fcm", "token": "f" * 20})
    _, body, _ = await running.post(job)
    await running.wait(body["job_id"], states=("waiting",))
    clock.t = at("2026-11-29T07:00:00Z")
    assert await running.gateway.scheduler.run_due() == 2
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"]


def test_gateway_preview_cli_shows_policy_reasons(tmp_path) -> None:
    """The issue's must-show: `gateway preview` on the shared cart example at a fixed
    instant, with the real APNs and email channels configured (nothing is sent)."""
    import os
    import subprocess
    import sys

    from gateway.testing import ApnsFake

    key = ApnsFake.__new__(ApnsFake)
    key.__post_init__()
    config = tmp_path / "gateway.toml"
    config.write_text("""
[channels.apns.apps.shop]
team_id = "TEAM123456"
key_id = "KEY1234567"
key = { env = "PREVIEW_APNS_KEY" }
topic = "com.shop.app"
[channels.email]
host = "smtp.example.net"
from_address = "news@shop.example"
""")
    job = tmp_path / "cart.json"
    job.write_text(dict(example_jobs())["job-cart-reminder.json"].decode())
    env = dict(os.environ, PREVIEW_APNS_KEY=key.key_pem())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(config),
            "preview",
            str(job),
            "--now",
            "2026-11-28T12:00:00Z",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    assert any(r.startswith("email suppressed unsubscribed") for r in rows)  # u-1002
    assert any(r.startswith("u-1004 big-cart apns suppressed unsubscribed - timezone_fallback") for r in rows)
    assert any(r.startswith("u-1001 big-cart apns would_send") for r in rows)
