"""Isolation, as a property: a job of good recipients on every channel with one hostile
recipient mixed in (hypothesis draws which kind, where, and where the gateway restarts),
through all five channels against their fakes. Each good recipient is delivered exactly
once and decided `sent`; the hostile one is decided with a reason; no provider's circuit
opens; and stopping and starting the gateway in the middle of the job changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fleet import CHANNELS, Fleet, apns_fault, fcm_fault, hub_fault
from tests.hostile import SCALE


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(pipeline={"batch_size": 3, "workers": 2}, delivery={"backoff_base": "10ms", "backoff_max": "20ms"}) as f:
        yield f


def good(fleet: Fleet, channel: str, n: int) -> tuple[dict[str, Any], str]:
    """A recipient reachable on `channel` alone, and the name its receipt is counted by."""
    user = f"u{n}-{uuid.uuid4().hex[:8]}"
    recipient: dict[str, Any] = {"user_id": user, "attributes": {"first_name": f"N{n}"}, "devices": []}
    if channel in ("apns", "fcm"):
        token = uuid.uuid4().hex * 2
        recipient["devices"] = [{"channel": channel, "token": token}]
        return recipient, token
    if channel == "webpush":
        subscription = fleet.run(_subscription(fleet))
        recipient["devices"] = [{"channel": "webpush", "subscription": subscription}]
        return recipient, subscription["endpoint"].rsplit("/", 1)[1]
    if channel == "email":
        recipient["email"] = f"{user}@example.com"
        return recipient, recipient["email"]
    recipient["devices"] = [{"channel": "speaker", "target": "home-hub", "device_id": user}]
    return recipient, user


async def _subscription(fleet: Fleet) -> dict[str, Any]:
    return fleet.push.subscription()


Hostile = Callable[[Fleet, dict[str, Any]], set[str]]  # makes the recipient hostile: the outcomes it may end with


def bad_push_keys(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["devices"] = [{"channel": "webpush", "subscription": fleet.run(_subscription(fleet))}]
    r["devices"][0]["subscription"]["keys"]["p256dh"] = "not-a-point"
    return {"invalid_token"}


def unknown_push_subscription(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    subscription = fleet.run(_subscription(fleet))
    subscription["endpoint"] = subscription["endpoint"].rsplit("/", 1)[0] + "/gone-" + uuid.uuid4().hex
    r["devices"] = [{"channel": "webpush", "subscription": subscription}]
    return {"invalid_token"}


def push_target_with_a_space(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    subscription = fleet.run(_subscription(fleet))
    subscription["endpoint"] += " x"  # accepted at intake; cannot go on an HTTP request line
    r["devices"] = [{"channel": "webpush", "subscription": subscription}]
    return {"failed"}


def dead_apns_token(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    token = uuid.uuid4().hex * 2
    fleet.hostile[token] = apns_fault("BadDeviceToken")
    r["devices"] = [{"channel": "apns", "token": token}]
    return {"invalid_token"}


def apns_payload_refused(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    token = uuid.uuid4().hex * 2
    fleet.hostile[token] = apns_fault("BadTopic")
    r["devices"] = [{"channel": "apns", "token": token}]
    return {"failed"}


def unregistered_fcm_token(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    token = uuid.uuid4().hex
    fleet.hostile[token] = fcm_fault("UNREGISTERED", 404)
    r["devices"] = [{"channel": "fcm", "token": token}]
    return {"invalid_token"}


def mailbox_gone(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["email"] = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    fleet.hostile[r["email"]] = "550 5.1.1 no such user"
    return {"invalid_token"}


def mailbox_refused(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["email"] = f"refused-{uuid.uuid4().hex[:8]}@example.com"
    fleet.hostile[r["email"]] = "554 5.7.1 rejected"
    return {"failed"}


def unknown_hub(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["devices"] = [{"channel": "speaker", "target": "no-such-hub", "device_id": uuid.uuid4().hex}]
    return {"failed"}


def hub_says_gone(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    device = uuid.uuid4().hex
    fleet.hostile[device] = hub_fault(410)
    r["devices"] = [{"channel": "speaker", "target": "home-hub", "device_id": device}]
    return {"invalid_token"}


def data_that_breaks_the_template(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["attributes"]["first_name"] = {"a": [1, {"b": None}]}  # the default variant's `| upcase` meets a map
    r["attributes"]["divisor"] = 0  # the first variant divides by it
    r["devices"] = [{"channel": "speaker", "target": "home-hub", "device_id": uuid.uuid4().hex}]
    return {"suppressed", "sent"}


def a_zone_that_is_a_directory(fleet: Fleet, r: dict[str, Any]) -> set[str]:
    r["timezone"] = "America"
    r["devices"] = [{"channel": "speaker", "target": "home-hub", "device_id": uuid.uuid4().hex}]
    return {"sent"}


HOSTILE: list[Hostile] = [
    bad_push_keys,
    unknown_push_subscription,
    push_target_with_a_space,
    dead_apns_token,
    apns_payload_refused,
    unregistered_fcm_token,
    mailbox_gone,
    mailbox_refused,
    unknown_hub,
    hub_says_gone,
    data_that_breaks_the_template,
    a_zone_that_is_a_directory,
]


def job(recipients: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "campaign": "isolation",
        "category": "transactional",
        "channels": list(CHANNELS),
        "variants": [
            {
                "name": "ratio",
                "when": "attributes.divisor == 0",
                "content": {"speaker": {"speech": "{{ 10 | divided_by: attributes.divisor }}"}},
            },
            {
                "name": "default",
                "content": {
                    "push": {"title": "Hi {{ attributes.first_name | upcase }}", "body": "Your order"},
                    "email": {"subject": "Hi {{ attributes.first_name }}", "text": "Your order"},
                    "speaker": {"speech": "Hi {{ attributes.first_name | upcase }}"},
                },
            },
        ],
        "recipients": recipients,
    }


@settings(max_examples=25 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    channels=st.lists(st.sampled_from(CHANNELS), min_size=5, max_size=10),
    hostile=st.sampled_from(HOSTILE),
    position=st.integers(0, 10),
    restart_after=st.none() | st.integers(1, 6),
)
def test_one_hostile_recipient_harms_only_itself(fleet: Fleet, channels, hostile, position, restart_after) -> None:
    goods = [good(fleet, channel, n) for n, channel in enumerate(channels)]
    bad: dict[str, Any] = {"user_id": f"hostile-{uuid.uuid4().hex[:8]}", "attributes": {"first_name": "H"}}
    allowed = hostile(fleet, bad)
    recipients = [r for r, _ in goods]
    recipients.insert(min(position, len(recipients)), bad)
    before = fleet.receipts()
    status, body = fleet.post(job(recipients))
    assert status == 202, body
    if restart_after is not None:  # stop the gateway once some deliveries went out, start another
        target = min(restart_after, len(goods))
        _until(
            lambda: (
                sum(fleet.receipts().values()) - sum(before.values()) >= target
                or fleet.status(body["job_id"])["state"] == "completed"
            )
        )
        fleet.stop()
        fleet.start()
    done = _settled(fleet, body["job_id"])
    after = fleet.receipts()
    for recipient, name in goods:
        assert after.get(name, 0) - before.get(name, 0) == 1, (recipient["user_id"], hostile.__name__)
    decisions = {(d["user_id"], d["channel"]): d for d in done["decisions"]}
    reached = {d["user_id"] for d in done["decisions"] if d["outcome"] == "sent"}
    assert reached >= {r["user_id"] for r, _ in goods}, hostile.__name__
    mine = [d for (user, _), d in decisions.items() if user == bad["user_id"] and d.get("reason") != "no_device"]
    assert mine and all(d["outcome"] in allowed and (d["outcome"] == "sent" or d.get("reason")) for d in mine), mine
    assert not fleet.breakers_open(), hostile.__name__


def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _settled(fleet: Fleet, job_id: str) -> Any:
    state: Any = None

    def settled() -> bool:
        nonlocal state
        state = fleet.status(job_id)
        return bool(state["state"] == "completed")

    _until(settled)
    return state
