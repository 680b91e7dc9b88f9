"""Preview tells the truth: for the same job at the same instant (a fake clock), what
`POST /v1/preview` says each recipient and channel would get is what the send then
decides, with every provider accepting (the five fakes): `would_send` is `sent`, and
every other outcome, reason and release time is the same. On every shipped example and on
generated jobs: routing `all` and `first`, marketing and transactional, subscriptions,
time zones in and out of quiet hours, local-time delivery, expiry, and frequency caps
(dropping and deferring, repeated users) that the preview checks read-only."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.clock import FakeClock
from gateway.testing.examples import example_jobs
from gateway.testing.fleet import CHANNELS
from gateway.testing.webhook import Fault
from tests.fleet import Fleet
from tests.hostile import SCALE

NOON = 1_764_331_200.0  # 2026-11-28T12:00:00Z: night in Tokyo and Auckland, morning in Chicago
CAPS = [
    {"name": "push-daily", "channels": ["push"], "limit": 1, "window": "24h"},
    {"name": "two-an-hour", "channels": ["any"], "limit": 2, "window": "1h", "action": "defer"},
    {"name": "no-speaker", "channels": ["speaker"], "limit": 0, "window": "1h", "tags": ["quiet"], "action": "defer"},
]
ZONES = [None, "UTC", "America/Chicago", "Asia/Tokyo", "Pacific/Auckland", "Europe/Berlin"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(
        clock=FakeClock(NOON), caps=CAPS, quiet_hours={"enabled": True, "spread": "0s"}, pipeline={"batch_size": 4}
    ) as f:
        yield f


def preview_then_send(fleet: Fleet, job: dict[str, Any]) -> tuple[Any, Any]:
    now = datetime.fromtimestamp(NOON, UTC).isoformat().replace("+00:00", "Z")
    status, preview = fleet.run(fleet._request("POST", f"/v1/preview?now={now}", job))
    assert status == 200, preview
    status, body = fleet.post(job)
    assert status == 202, body
    deadline = time.monotonic() + 30
    while (done := fleet.status(body["job_id"]))["state"] not in ("completed", "waiting"):
        assert time.monotonic() < deadline, done["state"]
        time.sleep(0.005)
    return preview, done


def assert_preview_is_the_send(preview: Any, done: Any) -> None:
    decided = {(d["recipient"], d["channel"]): d for d in done["decisions"]}
    assert len(decided) == sum(len(r["channels"]) for r in preview["recipients"])
    for r in preview["recipients"]:
        for shown in r["channels"]:
            decision = decided[(r["recipient"], shown["channel"])]
            if shown["outcome"] == "would_send":
                expected: tuple[Any, ...] = ("sent", None, None)
            else:
                expected = (shown["outcome"], shown.get("reason"), shown.get("until"))
            got = (decision["outcome"], decision.get("reason"), decision.get("until"))
            assert got == expected, (r["user_id"], shown, decision)


def with_fake_endpoints(fleet: Fleet, job: dict[str, Any]) -> dict[str, Any]:
    """The example's web push subscriptions replaced by the fake push service's (as the
    fake can only decrypt for keys it made); user ids made unique to this run (caps)."""
    run = uuid.uuid4().hex[:6]
    for recipient in job["recipients"]:
        recipient["user_id"] = f"{recipient['user_id']}-{run}"
        for device in recipient.get("devices", []):
            if device["channel"] == "webpush":
                device["subscription"] = fleet.run(_subscription(fleet))
    return job


async def _subscription(fleet: Fleet) -> dict[str, Any]:
    return fleet.push.subscription()


@pytest.mark.parametrize("name", [name for name, _ in example_jobs()])
def test_preview_is_what_the_example_does(fleet: Fleet, name: str) -> None:
    job = with_fake_endpoints(fleet, json.loads(dict(example_jobs())[name]))
    assert_preview_is_the_send(*preview_then_send(fleet, job))


# -- generated jobs ------------------------------------------------------------------------------
STATES = st.sampled_from([None, "opted_in", "subscribed", "unsubscribed"])


@st.composite
def jobs(draw: st.DrawFn, fleet: Fleet) -> dict[str, Any]:
    channels = draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True))
    run = uuid.uuid4().hex[:6]
    users = [f"{name}-{run}" for name in ("ana", "bo", "cy")]
    recipients = []
    for _ in range(draw(st.integers(1, 7))):
        user = draw(st.sampled_from(users))
        n = draw(st.integers(0, 10**6))
        recipient: dict[str, Any] = {"user_id": user, "devices": []}
        zone = draw(st.sampled_from(ZONES))
        if zone:
            recipient["timezone"] = zone
        subscriptions = {g: s for g in ("push", "email", "speaker") if (s := draw(STATES)) is not None}
        if subscriptions:
            recipient["subscriptions"] = subscriptions
        for channel in channels:
            if not draw(st.booleans()):
                continue
            if channel == "email":
                recipient["email"] = f"{user}@example.com"
                continue
            device = fleet.fakes.recipient(channel, n)["devices"][0]
            if channel == "webpush":
                device["subscription"] = fleet.run(_subscription(fleet))
            recipient["devices"].append(device)
        recipients.append(recipient)
    job = fleet.fakes.job(
        channels,
        recipients,
        category=draw(st.sampled_from(["marketing", "transactional"])),
        routing=draw(st.sampled_from(["all", "first"])),
        tags=draw(st.sampled_from([[], ["quiet"]])),
    )
    expires = draw(st.sampled_from([None, 600, 3 * 3600, 30 * 3600]))
    if expires is not None:
        job["expires_at"] = datetime.fromtimestamp(NOON + expires, UTC).isoformat().replace("+00:00", "Z")
    if draw(st.booleans()):
        job["deliver_at_local"] = draw(st.sampled_from(["09:00", "12:00", "18:30"]))
    return job


@settings(max_examples=30 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_preview_is_what_a_generated_job_does(fleet: Fleet, data: st.DataObject) -> None:
    job = data.draw(jobs(fleet))
    assert_preview_is_the_send(*preview_then_send(fleet, job))


@pytest.mark.parametrize("first_push", ["apns", "webpush"])
def test_a_user_in_two_batches_is_capped_as_preview_says(fleet: Fleet, first_push: str) -> None:
    """Found by the generated jobs: routing `first`, one user in two batches (of 4). The
    first batch waits on a slow speaker before its push channels; the second has no speaker
    message and reached push first, taking the user's daily push cap from the first batch.
    Preview walks batch after batch, channel by channel, and the send now does too."""
    run = uuid.uuid4().hex[:6]

    def reached(channel: str, user: str, n: int) -> dict[str, Any]:
        recipient = fleet.fakes.recipient(channel, n)
        subscribed = {"push": "subscribed", "speaker": "subscribed"}
        return {**recipient, "user_id": f"{user}-{run}", "timezone": "UTC", "subscriptions": subscribed}

    slow = reached("speaker", "bo", 900_001)
    fleet.hostile[slow["devices"][0]["device_id"]] = Fault(delay=0.5)
    recipients = [slow, reached(first_push, "ana", 900_002)]
    recipients += [
        reached("speaker", "cy", 900_003),
        reached("speaker", "cy", 900_004),
        reached("apns", "ana", 900_005),
    ]
    job = fleet.fakes.job(["speaker", "apns", "webpush"], recipients, category="marketing", routing="first")
    preview, done = preview_then_send(fleet, job)
    assert_preview_is_the_send(preview, done)
    outcomes = {(d["recipient"], d["channel"]): d["outcome"] for d in done["decisions"]}
    assert (outcomes[(1, first_push)], outcomes[(4, "apns")]) == ("sent", "capped")  # the cap goes in order
