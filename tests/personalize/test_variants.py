"""Variant choice, missing-data semantics, escaping, overrides, payload fit, preview."""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.channel import Channel
from gateway.config import LimitsConfig
from gateway.hookspecs import hookimpl
from gateway.intake.validate import JobError, accept_job
from gateway.model.delivery import Delivery, Result, Sent
from gateway.personalize.conditions import compile_condition
from gateway.personalize.render import Personalizer
from gateway.personalize.templates import ENV
from gateway.testing.examples import example_jobs
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-11-28T12:00:00Z"


def cart() -> dict[str, Any]:
    return json.loads(dict(example_jobs())["job-cart-reminder.json"])


def choose(job: dict[str, Any], channels: dict[str, str] | None = None) -> list[Any]:
    accepted = accept_job(json.dumps(job).encode(), LimitsConfig(), {})
    personalizer = Personalizer(accepted.job, accepted.variants, channels or {})
    return [personalizer.choose(r) for r in accepted.job.recipients]


def test_cart_example_variant_choice() -> None:
    u1001, u1002, u1003, u1004 = choose(cart())
    assert u1001.variant == "big-cart"
    assert u1001.contents["apns"].title == "Ana, your cart is waiting"
    assert u1001.contents["apns"].body.startswith("240.0 EUR of picks saved.")
    assert u1002.variant == "loyal"
    assert u1002.contents["fcm"].body == "Your favourite picks are still in your cart."
    assert [s.variant for s in u1002.skipped] == ["big-cart"]
    assert u1003.variant == "default"
    assert u1003.contents["email"].text == "Hi there,\nyour cart is saved for you."
    assert [(s.variant, s.reason) for s in u1003.skipped] == [
        ("big-cart", "condition_false"),
        ("loyal", "condition_false"),
    ]
    assert u1004.variant == "big-cart"
    assert u1004.contents["email"].subject == "Free express shipping on your cart, Susan"


def test_html_is_escaped_text_is_not() -> None:
    job = cart()
    job["recipients"][0]["attributes"]["first_name"] = "<script>x</script> & Ana"
    (choice,) = choose(dict(job, recipients=job["recipients"][:1]))
    email = choice.contents["email"]
    assert "<script>" not in email.html and "&lt;script&gt;x&lt;/script&gt; &amp; Ana" in email.html
    assert "<b>express for free</b>" in email.html  # the template's own markup stays
    assert email.subject.endswith("<script>x</script> & Ana")  # plain text is not escaped


def variant(name: str, title: str, when: str | None = None, **content: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"name": name, "content": {"push": {"title": title, **content}}}
    if when is not None:
        v["when"] = when
    return v


def one(attributes: dict[str, Any], *variants: dict[str, Any], **recipient: Any) -> Any:
    job = {
        "campaign": "c",
        "channels": ["apns"],
        "variants": list(variants),
        "recipients": [{"user_id": "u", "attributes": attributes, **recipient}],
    }
    return choose(job)[0]


@pytest.mark.parametrize(
    ("attributes", "expected", "detail"),
    [
        ({"first_name": "Ana"}, "named", None),
        ({}, "plain", "attributes.first_name is undefined"),  # missing path in an output: ineligible
        # blank is missing: nil, empty, whitespace (tabs, newlines, U+00A0), an empty list
        ({"first_name": None}, "plain", "attributes.first_name is blank"),
        ({"first_name": ""}, "plain", "attributes.first_name is blank"),
        ({"first_name": " \t\n"}, "plain", "attributes.first_name is blank"),
        ({"first_name": "\u00a0"}, "plain", "attributes.first_name is blank"),
        ({"first_name": []}, "plain", "attributes.first_name is blank"),
        ({"first_name": 0}, "named", None),  # a number is never blank
        ({"first_name": False}, "named", None),
    ],
)
def test_output_of_missing_or_blank_data_makes_variant_ineligible(
    attributes: dict[str, Any], expected: str, detail: str | None
) -> None:
    choice = one(attributes, variant("named", "Hi {{ attributes.first_name }}", when="true"), variant("plain", "Hi"))
    assert choice.variant == expected
    if expected == "plain":
        assert choice.skipped[0].reason == "missing_data"
        assert choice.skipped[0].path == "content.push.title"
        assert choice.skipped[0].detail == detail


@pytest.mark.parametrize(
    ("template", "attributes", "expected"),
    [
        ("Hi {{ attributes.first_name }}, your order has shipped.", {"first_name": ""}, "plain"),
        ("{{ properties.value }} EUR in your cart", {}, "plain"),  # a null event property
        ("Your picks: {{ attributes.picks | join: ', ' }}.", {"picks": []}, "plain"),  # blank after its filter
        ("Your picks: {{ attributes.picks | join: ', ' }}.", {"picks": ["a"]}, "named"),
        ("Hi {{ attributes.first_name | strip }}", {"first_name": "  "}, "plain"),
        ("Hi{{ attributes.nick | default: '' }}!", {"nick": ""}, "named"),  # handled by the author
        ("Hi {{ '' }}there", {}, "named"),  # a literal is the author's, not data
    ],
)
def test_blank_data_after_filters_is_missing(template: str, attributes: dict[str, Any], expected: str) -> None:
    job = {
        "campaign": "c",
        "channels": ["apns"],
        "variants": [variant("named", template, when="true"), variant("plain", "Hi")],
        "recipients": [{"user_id": "u", "attributes": attributes, "properties": {"value": None}}],
    }
    assert choose(job)[0].variant == expected


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("Ana", "Hi Ana"),
        ("", "Hi there"),
        ("   ", "Hi there"),
        ("\t", "Hi there"),
        (None, "Hi there"),
        (False, "Hi there"),
        (0, "Hi 0"),
        ("MISSING", "Hi there"),
    ],
)
def test_default_covers_nil_false_empty_and_whitespace(value: Any, rendered: str) -> None:
    attributes = {} if value == "MISSING" else {"first_name": value}
    choice = one(attributes, variant("only", "Hi {{ attributes.first_name | default: 'there' }}"))
    assert choice.variant == "only"
    assert choice.contents["apns"].title == rendered


def test_testing_a_missing_path_in_a_template_is_missing_data() -> None:
    choice = one({}, variant("vip", "{% if attributes.vip %}VIP{% endif %}Hi", when="true"), variant("d", "Hi"))
    assert choice.variant == "d" and choice.skipped[0].detail == "attributes.vip is undefined"


@pytest.mark.parametrize(
    "template",
    [
        "Hi {{ attributes.first_name }}",  # missing data
        "{{ attributes.n | divided_by: 0 }}",
    ],
)  # render error
def test_a_skipped_variant_leaves_no_cyclic_garbage(template: str) -> None:
    # A skipped variant is an everyday outcome. Garbage that only the cyclic GC can free
    # would keep the frames, and through them the pipeline's whole batch, alive: the
    # hot path paid ~20% for it in GC passes.
    job = {
        "campaign": "c",
        "channels": ["apns"],
        "variants": [variant("named", template, when="true"), variant("plain", "Hi")],
        "recipients": [{"user_id": f"u{i}", "attributes": {"n": 1}} for i in range(3)],
    }
    accepted = accept_job(json.dumps(job).encode(), LimitsConfig(), {})
    personalizer = Personalizer(accepted.job, accepted.variants, {})
    gc.collect()
    gc.disable()
    try:
        choices = [personalizer.choose(r) for r in accepted.job.recipients]
        assert {c.variant for c in choices} == {"plain"}
        del choices
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_default_that_cannot_render_suppresses_with_the_path(start, tmp_path) -> None:
    choice = one({}, variant("d", "Hi {{ attributes.first_name }}"))
    assert choice.variant is None
    assert choice.failure is not None
    assert (choice.failure.reason, choice.failure.path) == ("missing_data", "content.push.title")


@pytest.mark.parametrize(
    ("when", "attributes", "holds"),
    [
        ("attributes.vip == true", {"vip": True}, True),
        ("attributes.vip == true", {}, False),  # missing: false, not an error
        ("attributes.tier != 'gold'", {}, False),  # missing makes != false too
        ("attributes.tier != 'gold'", {"tier": "silver"}, True),
        ("attributes.score >= 200 or attributes.vip == true", {"vip": True}, True),  # or still works
        ("attributes.score >= 200 and attributes.vip == true", {"vip": True}, False),
        ("attributes.score >= 200", {"score": "lots"}, False),  # type mismatch: false, not a crash
        ("attributes.score >= 200", {"score": 200}, True),
        ("attributes.tags contains 'vip'", {"tags": ["vip"]}, True),
        ("attributes.tags contains 'vip'", {}, False),
        ("attributes.vip", {"vip": "yes"}, True),
        ("attributes.vip", {}, False),
    ],
)
def test_condition_semantics(when: str, attributes: dict[str, Any], holds: bool) -> None:
    scope = {"attributes": attributes, "events": {}, "properties": {}, "user_id": "u", "campaign": "c", "channel": None}
    assert compile_condition(when, ENV)(scope) is holds


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("attributes.vip ==", "line:column 1:17"),
        ("not attributes.vip", "not operator"),
        ("true %}{{ attributes.secret }}{% if true", ""),  # no breaking out of the condition
        ("attributes.a | upcase", ""),
    ],
)
def test_bad_conditions_are_400_at_intake(when: str, message: str) -> None:
    job = cart()
    job["variants"][0]["when"] = when
    with pytest.raises(JobError) as err:
        accept_job(json.dumps(job).encode(), LimitsConfig(), {})
    assert err.value.path == "$.variants[0].when"
    assert message in err.value.message


def test_push_override_replaces_field_by_field() -> None:
    job = {
        "campaign": "c",
        "channels": ["apns", "fcm"],
        "variants": [
            {
                "name": "d",
                "content": {
                    "push": {"title": "Generic {{ attributes.n }}", "body": "Shared body", "sound": "ding"},
                    "apns": {"title": "iOS {{ attributes.n }}"},
                },
            }
        ],
        "recipients": [{"user_id": "u", "attributes": {"n": "1"}}],
    }
    (choice,) = choose(job)
    assert (choice.contents["apns"].title, choice.contents["apns"].body) == ("iOS 1", "Shared body")
    assert choice.contents["apns"].sound == "ding"
    assert (choice.contents["fcm"].title, choice.contents["fcm"].body) == ("Generic 1", "Shared body")


def test_channel_is_in_the_context() -> None:
    job = {
        "campaign": "c",
        "channels": ["apns", "email"],
        "variants": [
            {
                "name": "d",
                "content": {"push": {"title": "via {{ channel }}"}, "email": {"subject": "via {{ channel }}"}},
            }
        ],
        "recipients": [{"user_id": "u"}],
    }
    (choice,) = choose(job)
    assert choice.contents["apns"].title == "via apns" and choice.contents["email"].subject == "via email"


def test_templates_are_parsed_once_per_job_not_per_recipient(monkeypatch) -> None:
    calls = []
    original = ENV.from_string
    monkeypatch.setattr(ENV, "from_string", lambda source, **kw: (calls.append(source), original(source, **kw))[1])
    job = cart()
    job["recipients"] = job["recipients"] * 50
    accepted = accept_job(json.dumps(job).encode(), LimitsConfig(), {})
    parsed = len(calls)
    personalizer = Personalizer(accepted.job, accepted.variants, {})
    for r in accepted.job.recipients:
        personalizer.choose(r)
    assert len(calls) == parsed <= 30  # the job's templates, whatever the number of recipients


class Tiny(Channel):
    """A push channel with a small payload limit, to exercise fitting."""

    name = "tiny"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    max_payload_bytes = 120
    sent: ClassVar[list[Delivery]] = []

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        Tiny.sent += deliveries
        return [Sent() for _ in deliveries]


class TinyPlugin:
    @hookimpl
    def register_channels(self):
        return [Tiny]


async def test_long_body_is_shortened_and_oversize_title_fails(start, tmp_path) -> None:
    Tiny.sent = []
    running = await start(make_config(tmp_path), extra_plugins=(TinyPlugin(),))
    job = {
        "campaign": "c",
        "channels": ["tiny"],
        "category": "transactional",
        "variants": [{"name": "d", "content": {"push": {"title": "{{ properties.t }}", "body": "{{ properties.b }}"}}}],
        "recipients": [
            {"user_id": user, "properties": {"t": title, "b": body}, "devices": [{"channel": "tiny", "token": user}]}
            for user, title, body in (("fits", "Hi", "short"), ("long", "Hi", "é" * 200), ("title", "T" * 300, "x"))
        ],
    }
    _, body, _ = await running.post(job)
    done = await running.wait(body["job_id"])
    decisions = {d["user_id"]: d for d in done["decisions"]}
    assert decisions["fits"]["outcome"] == "sent" and "detail" not in decisions["fits"]
    assert decisions["long"]["outcome"] == "sent"
    assert "body shortened from 200" in decisions["long"]["detail"]
    assert (decisions["title"]["outcome"], decisions["title"]["reason"]) == ("failed", "payload_too_large")
    shortened = next(d for d in Tiny.sent if d.user_id == "long").content
    assert shortened.body.endswith("\u2026") and len(json.dumps(shortened.body, ensure_ascii=False)) < 120
    assert {d.user_id for d in Tiny.sent} == {"fits", "long"}  # no provider call for the oversize title


async def test_preview_api(api, receiver) -> None:
    body = dict(example_jobs())["job-cart-reminder.json"]
    async with api.http.post("/v1/preview", data=body, params={"now": NOW}) as r:
        assert r.status == 200
        result = await r.json()
    assert result["now"] == NOW
    by_user = {r["user_id"]: r for r in result["recipients"]}
    assert [by_user[u]["variant"] for u in ("u-1001", "u-1002", "u-1003", "u-1004")] == [
        "big-cart",
        "loyal",
        "default",
        "big-cart",
    ]
    assert by_user["u-1002"]["skipped"] == [{"variant": "big-cart", "reason": "condition_false"}]
    apns = next(c for c in by_user["u-1001"]["channels"] if c["channel"] == "apns")
    assert apns["content"]["title"] == "Ana, your cart is waiting"
    assert apns["outcome"] == "suppressed" and apns["reason"] == "channel_unavailable"
    async with api.http.get("/metrics") as r:
        assert "gateway_jobs_accepted_total 0" in await r.text()  # nothing was accepted or sent
    async with api.http.post("/v1/preview", data=body, params={"now": "yesterday"}) as r:
        assert r.status == 400
    async with api.http.post("/v1/preview", data=b"{}") as r:
        assert r.status == 400 and (await r.json())["path"] == "$"


async def test_preview_of_html_made_of_markup_and_data(api, receiver) -> None:
    """A two-part HTML template (its markup, then data) crashed preview's JSON (a Markup
    value) and escaped the template's own markup."""
    job = {
        "campaign": "c",
        "channels": ["email"],
        "variants": [{"name": "d", "content": {"email": {"subject": "Hi", "html": "<p>Hi {{ attributes.n }}"}}}],
        "recipients": [{"user_id": "u", "email": "u@example.com", "attributes": {"n": "R&D"}}],
    }
    async with api.http.post("/v1/preview", json=job, params={"now": NOW}) as r:
        assert r.status == 200, await r.text()
        result = await r.json()
    assert result["recipients"][0]["channels"][0]["content"]["html"] == "<p>Hi R&amp;D"


def test_preview_cli_table_and_json(tmp_path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(cart()))
    run = [sys.executable, "-m", "gateway", "preview", str(job), "--now", NOW]
    table = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "u-1002     loyal" in table.stdout and "skipped big-cart" in table.stdout
    assert "Your favourite picks" in table.stdout
    as_json = subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=tmp_path)
    data = json.loads(as_json.stdout)
    assert data["recipients"][2]["channels"][3]["content"]["text"] == "Hi there,\nyour cart is saved for you."
    # No channel is configured here: policy shows all the same, each channel flagged.
    assert any("not configured here" in w for w in data["warnings"])
    decided = {(c["channel"], c["outcome"], c.get("reason")) for r in data["recipients"] for c in r["channels"]}
    assert not any(outcome == "suppressed" and reason == "channel_unavailable" for _, outcome, reason in decided)
    assert {("email", "suppressed", "unsubscribed"), ("speaker", "suppressed", "not_subscribed")} <= decided
    assert all("not_configured" in c["flags"] for r in data["recipients"] for c in r["channels"])
    bad = copy.deepcopy(cart())
    bad["variants"][0]["when"] = "events.cart_abandoned.properties.value >="
    job.write_text(json.dumps(bad))
    failed = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1 and "$.variants[0].when" in failed.stderr
