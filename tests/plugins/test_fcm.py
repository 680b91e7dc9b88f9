"""FCM HTTP v1 against the local fake: OAuth assertion, message shape, error table."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import plugins.fcm
from gateway.clock import FakeClock
from gateway.plugin import Throttled
from gateway.testing import FcmFake, FcmFault
from tests.conftest import epoch, make_config
from tests.plugins.tables import attempted, decide


@pytest.fixture
async def fcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FcmFake]:
    async with FcmFake() as fake:
        (tmp_path / "sa.json").write_text(json.dumps(fake.service_account()))
        yield fake


def fcm_config(tmp_path: Path, fcm: FcmFake, **extra: Any) -> Any:
    config = make_config(tmp_path)
    config.channels["fcm"] = {"service_account": {"file": str(tmp_path / "sa.json")}, "endpoint": fcm.url, **extra}
    return config


def fcm_job(tokens: list[str], **content: Any) -> dict[str, Any]:
    push = {
        "title": "Hi {{ attributes.n }}",
        "body": "Your cart",
        "deep_link": "shop://cart",
        "collapse_key": "cart",
        "data": {"cart": "{{ attributes.count }}"},
        **content,
    }
    return {
        "campaign": "c",
        "channels": ["fcm"],
        "category": "transactional",
        "variants": [{"name": "d", "content": {"push": push}}],
        "recipients": [
            {"user_id": f"u{i}", "attributes": {"n": f"N{i}", "count": 3}, "devices": [{"channel": "fcm", "token": t}]}
            for i, t in enumerate(tokens)
        ],
    }


async def test_message_shape_and_one_oauth_token_for_many_sends(start, tmp_path, fcm) -> None:
    running = await start(fcm_config(tmp_path, fcm, android_channel_id="promos"))
    _, body, _ = await running.post(fcm_job([f"tok-{i}" for i in range(30)]))
    done = await running.wait(body["job_id"])
    assert {d["outcome"] for d in done["decisions"]} == {"sent"}
    assert len(fcm.issued) == 1  # cached, single-flight across 30 concurrent sends
    assert not fcm.rejected_assertions
    (message,) = fcm.to("tok-0")
    assert message["notification"] == {"title": "Hi N0", "body": "Your cart"}
    assert message["data"] == {"cart": "3", "deep_link": "shop://cart"}  # strings only
    android = message["android"]
    assert android["priority"] == "HIGH" and android["collapse_key"] == "cart"
    assert android["notification"] == {"channel_id": "promos"}
    assert android["ttl"] == "2419200s"  # default 4 weeks without expires_at


async def test_ttl_follows_expires_at(start, tmp_path, fcm) -> None:
    import time
    from datetime import UTC, datetime

    running = await start(fcm_config(tmp_path, fcm))
    expires = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    _, body, _ = await running.post({**fcm_job(["t"]), "expires_at": expires})
    await running.wait(body["job_id"])
    ttl = int(fcm.to("t")[0]["android"]["ttl"].removesuffix("s"))
    assert 3500 < ttl <= 3600


# (fault, outcome, reason, attempts)
TABLE = [
    (FcmFault(404, "UNREGISTERED"), "invalid_token", "unregistered", 1),
    (FcmFault(403, "SENDER_ID_MISMATCH"), "invalid_token", "sender_id_mismatch", 1),
    (
        FcmFault(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
        "invalid_token",
        "invalid_registration",
        1,
    ),
    (FcmFault(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'"), "failed", "invalid_argument", 1),
    (FcmFault(401, "THIRD_PARTY_AUTH_ERROR"), "failed", "third_party_auth_error", 1),
    (FcmFault(429, "QUOTA_EXCEEDED", retry_after="7"), "deferred", "retrying", 1),
    (FcmFault(503, "UNAVAILABLE"), "deferred", "retrying", 2),
    (FcmFault(500, "INTERNAL"), "deferred", "retrying", 2),
]


@pytest.mark.parametrize(
    ("fault", "outcome", "reason", "attempts"), TABLE, ids=[f"{t[0].status}-{t[0].error_code}" for t in TABLE]
)
async def test_error_table(start, tmp_path, fcm, fault, outcome, reason, attempts) -> None:
    fcm.fault = lambda token, attempt: fault
    clock = FakeClock(1_800_000_000)
    running = await start(fcm_config(tmp_path, fcm), clock=clock)
    decision = await decide(running, fcm_job(["t"]))
    assert (decision["outcome"], decision["reason"]) == (outcome, reason)
    assert attempted(fcm.attempts["t"], attempts, outcome)
    if fault.retry_after:  # past the in-memory window: the next attempt waits in the store
        assert epoch(decision["until"]) >= 1_800_000_000 + 7


async def test_unauthenticated_refreshes_the_token_once(start, tmp_path, fcm) -> None:
    running = await start(fcm_config(tmp_path, fcm))
    _, first, _ = await running.post(fcm_job(["a"]))
    await running.wait(first["job_id"])
    fcm.revoked.add(fcm.issued[0])  # the cached token stops working
    _, second, _ = await running.post(fcm_job(["b"]))
    assert (await running.wait(second["job_id"]))["decisions"][0]["outcome"] == "sent"
    assert len(fcm.issued) == 2


async def test_transient_then_sent(start, tmp_path, fcm) -> None:
    fcm.fault = lambda token, attempt: FcmFault(503, "UNAVAILABLE") if attempt == 1 else None
    running = await start(fcm_config(tmp_path, fcm))
    _, body, _ = await running.post(fcm_job(["t"]))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"


async def test_long_body_is_shortened_to_fit_4096_bytes(start, tmp_path, fcm) -> None:
    running = await start(fcm_config(tmp_path, fcm))
    _, body, _ = await running.post(fcm_job(["t"], body="x" * 5000))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert decision["outcome"] == "sent" and "body shortened" in decision["detail"]
    assert fcm.to("t")[0]["notification"]["body"].endswith("\u2026")


async def test_bad_service_account_is_a_config_error(tmp_path) -> None:
    from gateway.config import ConfigError, GatewayConfig
    from gateway.loader import channel_classes, configure_channels, plugin_manager

    (tmp_path / "sa.json").write_text("{not json")
    config = GatewayConfig(channels={"fcm": {"service_account": {"file": str(tmp_path / "sa.json")}}})
    with pytest.raises(ConfigError) as err:
        configure_channels(config, channel_classes(plugin_manager(config)))
    assert err.value.problems[0].startswith("channels.fcm.service_account: not a service account JSON")


@pytest.mark.parametrize("fault", [FcmFault(drop=True), FcmFault(delay=1.0)], ids=["drop", "slow"])
async def test_dropped_or_slow_requests_are_retried(start, tmp_path, fcm, fault) -> None:
    fcm.fault = lambda token, attempt: fault if attempt == 1 else None
    running = await start(fcm_config(tmp_path, fcm, timeout="200ms"))
    _, body, _ = await running.post(fcm_job(["t"]))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"
    assert fcm.attempts["t"] == 2


async def test_a_refused_credential_is_one_log_line_not_one_per_message(
    start, tmp_path, fcm, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(plugins.fcm, "advice", Throttled(plugins.fcm.log))  # not what earlier tests said
    fcm.fault = lambda token, attempt: FcmFault(401, "THIRD_PARTY_AUTH_ERROR")
    running = await start(fcm_config(tmp_path, fcm))
    with caplog.at_level(logging.ERROR, "plugins.fcm"):
        _, body, _ = await running.post(fcm_job([f"t{i}" for i in range(20)]))
        status = await running.wait(body["job_id"])
    assert {d["reason"] for d in status["decisions"]} == {"third_party_auth_error"}
    lines = [r.getMessage() for r in caplog.records if r.name == "plugins.fcm"]
    assert len(lines) == 1 and "fix the credentials in Firebase" in lines[0], lines
