"""Every job field fed hostile values (hypothesis): a valid job with one node anywhere
replaced by a hostile value, or an unknown key added. `POST /v1/jobs` answers a 4xx whose
body names the bad field, or a 202 after which the job settles (completed, or waiting
for deferred messages) with a decision for every recipient on every channel: no 5xx, no
stuck job. `POST /v1/preview` answers 200 or the same 4xx.

The inputs the issues reported (each broke something once) are run explicitly first."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

from gateway.testing import WebhookReceiver, new_secret
from tests.conftest import API_KEY, make_config
from tests.hostile import SCALE, GatewayThread, mutated

SETTLED = ("completed", "waiting")


def base_job() -> dict[str, Any]:
    """Two channels, two variants, templates over every part of the context."""
    return {
        "campaign": "hostile",
        "category": "transactional",
        "channels": ["speaker", "email"],
        "expires_at": "2099-01-01T00:00:00Z",
        "variants": [
            {
                "name": "vip",
                "when": "attributes.vip == true",
                "content": {
                    "speaker": {"speech": "Hi {{ attributes.first_name }}, {{ properties.items | join: ', ' }}"}
                },
            },
            {
                "name": "default",
                "content": {
                    "speaker": {"speech": "Hello {{ attributes.first_name | default: 'there' }}"},
                    "email": {"subject": "Hi {{ user_id }}", "text": "{{ events.cart.properties.value | default: 0 }}"},
                },
            },
        ],
        "recipients": [
            {
                "user_id": f"u{i}",
                "timezone": "Europe/Paris",
                "email": f"u{i}@example.com",
                "attributes": {"first_name": f"N{i}", "vip": i == 0},
                "events": {"cart": {"count": 1, "last_at": "2026-11-27T10:00:00Z", "properties": {"value": 12}}},
                "properties": {"items": ["a", "b"]},
                "devices": [{"channel": "speaker", "target": "home-hub", "device_id": f"d{i}"}],
            }
            for i in range(2)
        ],
    }


# What the issues saw break, each as (path, value): each must be a 4xx naming a field, or a job
# that settles with a decision for everyone.
REPORTED: list[tuple[tuple[Any, ...], Any]] = [
    (("recipients", 0, "timezone"), "America"),
    (("recipients", 0, "timezone"), "x" * 300),
    (("expires_at",), "0001-01-01T00:00:00+14:00"),
    (("variants", 1, "content", "speaker", "speech"), "{{ properties.items | compact: 'sku' }}"),
    (("variants", 1, "content", "speaker", "speech"), "{% include 'x' %}"),
    (("variants", 1, "content", "speaker", "speech"), "{% render '/etc/passwd' %}"),
    (("variants", 1, "content", "speaker", "speech"), "{{ attributes.first_name | plus: true }}"),
    (("recipients", 0, "email"), "ü@example.com"),
    (("recipients", 0, "email"), "a\x00@example.com"),
    (("recipients", 0, "email"), "Optout<optout@example.com>"),
    (("recipients", 0, "subscriptions"), {"mail": "subscribed"}),
    (("channels",), [f"c{i}" for i in range(3000)]),
    (("recipients", 0, "attributes", "first_name"), {"nested": [1, {"deep": None}]}),
    (("recipients", 0, "properties", "items"), [[[]]] * 3),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    tmp = tmp_path_factory.mktemp("hostile-jobs")
    secret = new_secret()
    os.environ["GATEWAY_TEST_API_KEYS"] = API_KEY
    os.environ["GATEWAY_TEST_SPEAKER_SECRET"] = secret

    async def receiver() -> WebhookReceiver:
        started = WebhookReceiver(secret)
        await started.start()
        return started

    with GatewayThread(lambda r: make_config(tmp, r.url), receiver) as running:
        yield running


def note(value: str) -> None:
    """A statistics event, inside a hypothesis example only."""
    try:
        current_build_context()
    except Exception:
        return
    from hypothesis import event

    event(value)


def post_and_settle(gateway: GatewayThread, job: Any, idempotency_key: str | None = None) -> None:
    """With an Idempotency-Key, the job is posted twice: the second answer is the first's."""
    status, body = post(gateway, job, idempotency_key)
    assert status is not None and status < 500, (status, body)
    if idempotency_key is not None:
        again = post(gateway, job, idempotency_key)
        assert again == (status, body), (again, status, body)
    if status != 202:
        assert 400 <= status < 500 and body["error"] and "message" in body, body
        if status in (400, 413):
            assert body["path"].startswith("$"), body
        note(f"jobs: {status} at {body.get('path', '-').split('[')[0]}")
        return
    note("jobs: 202")
    deadline = time.monotonic() + 30
    while True:
        status, state = gateway.json("GET", f"/v1/jobs/{body['job_id']}?limit=1000", key=API_KEY)
        assert status == 200, state
        if state["state"] in SETTLED:
            break
        assert time.monotonic() < deadline, f"job stuck in {state['state']}: {state['recipients_done']} done"
        time.sleep(0.02)
    n, channels = state["recipients"], len(job["channels"])
    assert len(state["decisions"]) == n * channels, state
    assert all(d["outcome"] and (d["outcome"] == "sent" or d.get("reason")) for d in state["decisions"])


def post(gateway: GatewayThread, job: Any, idempotency_key: str | None) -> tuple[int | None, Any]:
    if idempotency_key is None:
        return gateway.json("POST", "/v1/jobs", job, key=API_KEY)
    raw = job if isinstance(job, bytes) else json.dumps(job).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    headers["Idempotency-Key"] = idempotency_key
    status, _, answer = gateway.request("POST", "/v1/jobs", raw, headers)
    return status, json.loads(answer) if answer else None


def preview(gateway: GatewayThread, job: Any) -> None:
    status, body = gateway.json("POST", "/v1/preview?now=2026-11-28T12:00:00Z", job, key=API_KEY)
    assert status is not None and status < 500, (status, body)
    if status != 200:
        assert 400 <= status < 500 and body["error"], body


@pytest.mark.parametrize(("path", "value"), REPORTED, ids=lambda v: repr(v)[:40])
def test_reported_inputs_are_a_400_or_a_settled_job(gateway, caplog, path, value) -> None:
    from tests.hostile import replaced

    job = replaced(base_job(), path, value)
    with caplog.at_level(logging.ERROR):
        post_and_settle(gateway, job)
        preview(gateway, job)
    assert not [r for r in caplog.records if r.name.startswith("gateway") and r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]


@settings(
    max_examples=150 * SCALE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(job=mutated(base_job()), keyed=st.booleans())
@example(job=copy.deepcopy(base_job()), keyed=True)
def test_hostile_job_fields_are_a_4xx_or_a_settled_job(gateway: GatewayThread, job: Any, keyed: bool) -> None:
    post_and_settle(gateway, job, uuid.uuid4().hex if keyed else None)
    preview(gateway, job)


@pytest.mark.parametrize("idempotency_key", [None, "deep"])
def test_json_nested_a_thousand_deep_is_a_400(gateway: GatewayThread, idempotency_key: str | None) -> None:
    """With an Idempotency-Key too (the key's comparison decoded the body first, raised, and
    left the key claimed: a 500, then every later request with the key waited forever)."""
    job = base_job()
    job["recipients"][0]["attributes"]["x"] = "@@DEEP@@"
    raw = json.dumps(job).replace('"@@DEEP@@"', "[" * 1000 + "1" + "]" * 1000).encode()
    for _ in range(2):
        status, body = post(gateway, raw, idempotency_key)
        assert status == 400 and body["message"] == "JSON nested too deeply", body
