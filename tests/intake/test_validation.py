"""Malformed send jobs: each gets a 4xx whose body names the bad field, never a 5xx."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig
from gateway.intake.validate import JobError, accept_job
from tests.conftest import SHARED_EXAMPLES, make_config

CART = SHARED_EXAMPLES / "job-cart-reminder.json"


def cart() -> dict[str, Any]:
    from gateway.testing.examples import example_jobs

    return json.loads(dict(example_jobs())["job-cart-reminder.json"])


def mutate(fn: Callable[[dict[str, Any]], None]) -> bytes:
    job = copy.deepcopy(cart())
    fn(job)
    return json.dumps(job).encode()


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """setter("recipients.1.devices.0.token", 5)"""

    def fn(job: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = job
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return fn


def deleter(path: str) -> Callable[[dict[str, Any]], None]:
    def fn(job: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = job
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return fn


def many_recipients(job: dict[str, Any]) -> None:
    job["recipients"] = job["recipients"] * 3000  # 12,000 > 10,000


def no_default(job: dict[str, Any]) -> None:
    job["variants"] = job["variants"][:2]


def default_first(job: dict[str, Any]) -> None:
    job["variants"] = [job["variants"][2], *job["variants"][:2]]


# (id, body, status, path the error must name)
CASES: list[tuple[str, bytes, int, str]] = [
    ("not json", b"{not json", 400, "$"),
    ("empty body", b"", 400, "$"),
    ("json array", b"[]", 400, "$"),
    ("json string", b'"job"', 400, "$"),
    ("truncated", CART.read_bytes()[:200] if CART.exists() else b'{"campaign": "x", ', 400, "$"),
    ("missing campaign", mutate(deleter("campaign")), 400, "$"),
    ("campaign wrong type", mutate(setter("campaign", 42)), 400, "$.campaign"),
    ("empty campaign", mutate(setter("campaign", "")), 400, "$.campaign"),
    ("unknown top-level field", mutate(setter("priority", "high")), 400, "$"),
    ("bad category", mutate(setter("category", "promo")), 400, "$.category"),
    ("bad routing", mutate(setter("routing", "any")), 400, "$.routing"),
    ("bad quiet_hours", mutate(setter("quiet_hours", "later")), 400, "$.quiet_hours"),
    ("bad deliver_at_local", mutate(setter("deliver_at_local", "25:00")), 400, "$.deliver_at_local"),
    ("bad expires_at", mutate(setter("expires_at", "next tuesday")), 400, "$.expires_at"),
    ("naive expires_at", mutate(setter("expires_at", "2026-12-05T00:00:00")), 400, "$.expires_at"),
    ("channels not a list", mutate(setter("channels", "apns")), 400, "$.channels"),
    ("empty channels", mutate(setter("channels", [])), 400, "$.channels"),
    ("duplicate channel", mutate(setter("channels", ["apns", "apns"])), 400, "$.channels[1]"),
    ("empty recipients", mutate(setter("recipients", [])), 400, "$.recipients"),
    ("empty variants", mutate(setter("variants", [])), 400, "$.variants"),
    ("missing default variant", mutate(no_default), 400, "$.variants[1].when"),
    ("default variant not last", mutate(default_first), 400, "$.variants[0].when"),
    ("duplicate variant name", mutate(setter("variants.1.name", "big-cart")), 400, "$.variants[1]"),
    ("unknown content kind", mutate(setter("variants.0.content.sms", {"text": "hi"})), 400, "$.variants[0].content"),
    ("email without subject", mutate(deleter("variants.2.content.email.subject")), 400, "$.variants[2].content.email"),
    (
        "template syntax error",
        mutate(setter("variants.0.content.push.title", "{{ attributes.first_name ")),
        400,
        "$.variants[0].content.push.title",
    ),
    (
        "unknown filter",
        mutate(setter("variants.2.content.push.body", "{{ 'x' | no_such_filter }}")),
        400,
        "$.variants[2].content.push.body",
    ),
    ("badge negative", mutate(setter("variants.0.content.push.badge", -1)), 400, "$.variants[0].content.push.badge"),
    (
        "data not strings",
        mutate(setter("variants.0.content.push.data", {"n": 1})),
        400,
        "$.variants[0].content.push.data.n",
    ),
    ("recipient unknown field", mutate(setter("recipients.0.age", 31)), 400, "$.recipients[0]"),
    ("recipient missing user_id", mutate(deleter("recipients.2.user_id")), 400, "$.recipients[2]"),
    ("user_id wrong type", mutate(setter("recipients.1.user_id", 1002)), 400, "$.recipients[1].user_id"),
    (
        "bad subscription state",
        mutate(setter("recipients.0.subscriptions.push", "maybe")),
        400,
        "$.recipients[0].subscriptions.push",
    ),
    ("attributes not an object", mutate(setter("recipients.0.attributes", [])), 400, "$.recipients[0].attributes"),
    (
        "event count negative",
        mutate(setter("recipients.0.events.cart_abandoned.count", -2)),
        400,
        "$.recipients[0].events.cart_abandoned.count",
    ),
    ("bad email", mutate(setter("recipients.3.email", "susan-at-example")), 400, "$.recipients[3].email"),
    (
        "device token wrong type",
        mutate(setter("recipients.1.devices.0.token", 12)),
        400,
        "$.recipients[1].devices[0].token",
    ),
    (
        "apns device without token",
        mutate(deleter("recipients.0.devices.0.token")),
        400,
        "$.recipients[0].devices[0].token",
    ),
    (
        "apns token not hex",
        mutate(setter("recipients.0.devices.0.token", "zz-not-hex")),
        400,
        "$.recipients[0].devices[0].token",
    ),
    (
        "webpush without keys",
        mutate(deleter("recipients.0.devices.1.subscription.keys")),
        400,
        "$.recipients[0].devices[1].subscription",
    ),
    (
        "webpush endpoint not https",
        mutate(setter("recipients.0.devices.1.subscription.endpoint", "http://x/y")),
        400,
        "$.recipients[0].devices[1].subscription.endpoint",
    ),
    (
        "webpush endpoint unparseable",
        mutate(setter("recipients.0.devices.1.subscription.endpoint", "https://[::1/y")),
        400,
        "$.recipients[0].devices[1].subscription.endpoint",
    ),
    (
        "webpush endpoint bad port",
        mutate(setter("recipients.0.devices.1.subscription.endpoint", "https://x:99999/y")),
        400,
        "$.recipients[0].devices[1].subscription.endpoint",
    ),
    (
        "speaker device without target",
        mutate(deleter("recipients.0.devices.2.target")),
        400,
        "$.recipients[0].devices[2].target",
    ),
    ("device unknown field", mutate(setter("recipients.0.devices.0.os", "ios")), 400, "$.recipients[0].devices[0]"),
    ("too many recipients", mutate(many_recipients), 413, "$.recipients"),
]


@pytest.mark.parametrize(("body", "status", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_malformed_job_gets_4xx_naming_the_field(api, body: bytes, status: int, path: str) -> None:
    got, reply, _ = await api.post(body, headers={"Content-Type": "application/json"})
    assert got == status, reply
    assert reply["path"] == path, reply
    assert reply["message"]


async def test_body_over_the_limit_is_413(start, tmp_path) -> None:
    running = await start(make_config(tmp_path, limits={"max_body_bytes": 4096}))
    status, reply, _ = await running.post(b"{" + b" " * 5000 + b"}")
    assert status == 413
    assert "4096" in reply["message"]


async def test_limits_are_configurable(start, tmp_path) -> None:
    running = await start(make_config(tmp_path, limits={"max_recipients": 2, "max_variants": 2}))
    status, reply, _ = await running.post(CART.read_bytes() if CART.exists() else json.dumps(cart()).encode())
    assert status == 413 and reply["path"] == "$.recipients"
    job = cart()
    job["recipients"] = job["recipients"][:2]
    status, reply, _ = await running.post(json.dumps(job).encode())
    assert status == 400 and reply["path"] == "$.variants"


def test_template_error_names_line_and_column() -> None:
    body = mutate(setter("variants.1.content.email.text", "Hi\n{% if %}x{% endif %}"))
    with pytest.raises(JobError) as err:
        accept_job(body, LimitsConfig(), {})
    assert err.value.path == "$.variants[1].content.email.text"
    assert "line:column 2:3" in err.value.message


def test_template_length_limit() -> None:
    body = mutate(setter("variants.2.content.speaker.speech", "x" * 1001))
    with pytest.raises(JobError) as err:
        accept_job(body, LimitsConfig(max_template_chars=1000), {})
    assert err.value.path == "$.variants[2].content.speaker.speech"


def test_at_least_25_malformed_cases() -> None:
    assert len(CASES) >= 25


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(
        [
            "campaign",
            "channels",
            "variants.0",
            "variants.2.content",
            "recipients.0",
            "recipients.0.devices.0",
            "recipients.1.events",
            "tags",
            "expires_at",
        ]
    ),
    value=json_values,
)
def test_any_value_anywhere_is_accepted_or_a_clear_400(path: str, value: Any) -> None:
    """Whatever JSON lands in a field, intake answers with a job or a JobError, never a crash."""
    try:
        accept_job(mutate(setter(path, value)), LimitsConfig(), {})
    except JobError as exc:
        assert exc.status in (400, 413)
        assert exc.path.startswith("$")


def test_unknown_context_root_is_rejected_at_intake() -> None:
    body = mutate(setter("variants.0.content.push.title", "Hi {{ attribute.first_name }}"))
    with pytest.raises(JobError) as err:
        accept_job(body, LimitsConfig(), {})
    assert err.value.path == "$.variants[0].content.push.title"
    assert "unknown variable 'attribute'" in err.value.message


def test_assigned_variables_are_not_context_roots() -> None:
    body = mutate(
        setter("variants.2.content.push.body", "{% assign n = attributes.first_name | default: 'you' %}{{ n }}")
    )
    accept_job(body, LimitsConfig(), {})


def test_type_error_before_a_syntax_error_is_still_a_400() -> None:
    body = mutate(setter("recipients.1.events", {"x": [float("inf")]}))  # json.dumps writes Infinity
    with pytest.raises(JobError) as err:
        accept_job(body, LimitsConfig(), {})
    assert err.value.status == 400 and err.value.path.startswith("$.recipients[1].events")
