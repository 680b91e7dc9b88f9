"""APNs over HTTP/2 + TLS against the local provider API, with token auth."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.clock import FakeClock
from gateway.testing import ApnsFake, ApnsFault
from tests.conftest import make_config
from tests.plugins.tables import attempted, decide

TOKEN = "a1" * 32


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def apns(ca: trustme.CA) -> AsyncIterator[ApnsFake]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with ApnsFake(context, topics=("com.shop.app", "com.shop.watch")) as fake:
        yield fake


@pytest.fixture
def key_env(apns: ApnsFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_APNS_KEY", apns.key_pem())


def apns_config(tmp_path: Path, apns: ApnsFake, ca: trustme.CA, **extra: Any) -> Any:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = make_config(tmp_path)
    app = {"team_id": apns.team_id, "key_id": apns.key_id, "key": {"env": "TEST_APNS_KEY"}}
    config.channels["apns"] = {
        "apps": {"shop": {**app, "topic": "com.shop.app"}, "watch": {**app, "topic": "com.shop.watch"}},
        "default_app": "shop",
        "endpoint": f"127.0.0.1:{apns.port}",
        "ca_file": str(tmp_path / "ca.pem"),
        **extra,
    }
    return config


def apns_job(devices: list[dict[str, Any]], **push: Any) -> dict[str, Any]:
    content = {
        "title": "Hi {{ attributes.n }}",
        "body": "Your cart",
        "deep_link": "shop://cart",
        "badge": 2,
        "sound": "default",
        "collapse_key": "cart",
        "data": {"campaign_ref": "x1"},
        **push,
    }
    return {
        "campaign": "c",
        "category": "transactional",
        "channels": ["apns"],
        "variants": [{"name": "d", "content": {"push": content}}],
        "recipients": [
            {"user_id": f"u{i}", "attributes": {"n": f"N{i}"}, "devices": [d]} for i, d in enumerate(devices)
        ],
    }


async def test_alert_payload_headers_and_token_auth(start, tmp_path, apns, ca, key_env) -> None:
    running = await start(apns_config(tmp_path, apns, ca))
    _, body, _ = await running.post(
        apns_job([{"channel": "apns", "token": TOKEN}, {"channel": "apns", "token": "b2" * 32, "app": "watch"}])
    )
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"] and not apns.rejected
    (note,) = apns.to(TOKEN)
    assert note.payload == {
        "aps": {"alert": {"title": "Hi N0", "body": "Your cart"}, "badge": 2, "sound": "default"},
        "deep_link": "shop://cart",
        "campaign_ref": "x1",
    }
    assert note.headers["apns-topic"] == "com.shop.app" and note.headers["apns-push-type"] == "alert"
    assert note.headers["apns-priority"] == "10" and note.headers["apns-collapse-id"] == "cart"
    assert note.headers["apns-id"] == str(uuid.UUID(note.headers["apns-id"]))  # a lowercase UUID
    assert note.claims["iss"] == apns.team_id
    assert apns.to("b2" * 32)[0].headers["apns-topic"] == "com.shop.watch"  # the device's app


async def test_a_device_naming_an_app_not_configured_fails_alone(start, tmp_path, apns, ca, key_env) -> None:
    """A typo in one device's app: that delivery fails (unknown_app), its job goes on."""
    running = await start(apns_config(tmp_path, apns, ca))
    devices = [{"channel": "apns", "token": TOKEN}, {"channel": "apns", "token": "c3" * 32, "app": "wacth"}]
    _, body, _ = await running.post(apns_job(devices))
    done = await running.wait(body["job_id"])
    assert [(d["outcome"], d.get("reason")) for d in done["decisions"]] == [("sent", None), ("failed", "unknown_app")]
    assert [n.token for n in apns.received] == [TOKEN]


TABLE = [
    (ApnsFault(400, "BadDeviceToken"), "invalid_token", "BadDeviceToken", 1),
    (ApnsFault(410, "Unregistered"), "invalid_token", "Unregistered", 1),
    (ApnsFault(400, "DeviceTokenNotForTopic"), "invalid_token", "DeviceTokenNotForTopic", 1),
    (ApnsFault(403, "Forbidden"), "failed", "Forbidden", 1),
    (ApnsFault(410, "ExpiredToken"), "failed", "ExpiredToken", 1),
    (ApnsFault(413, "PayloadTooLarge"), "failed", "PayloadTooLarge", 1),
    (ApnsFault(400, "BadTopic"), "failed", "BadTopic", 1),
    (ApnsFault(400, "TopicDisallowed"), "failed", "TopicDisallowed", 1),
    (ApnsFault(403, "ExpiredProviderToken"), "failed", "credentials", 1),
    (ApnsFault(403, "InvalidProviderToken"), "failed", "credentials", 1),
    (ApnsFault(403, "MissingProviderToken"), "failed", "credentials", 1),
    (ApnsFault(429, "TooManyProviderTokenUpdates"), "failed", "credentials", 1),
    (ApnsFault(429, "TooManyRequests"), "deferred", "retrying", 2),
    (ApnsFault(500, "InternalServerError"), "deferred", "retrying", 2),
    (ApnsFault(503, "ServiceUnavailable"), "deferred", "retrying", 2),
    (ApnsFault(503, "Shutdown"), "deferred", "retrying", 2),
]


@pytest.mark.parametrize(("fault", "outcome", "reason", "attempts"), TABLE, ids=[t[0].reason for t in TABLE])
async def test_reason_table(start, tmp_path, apns, ca, key_env, fault, outcome, reason, attempts) -> None:
    apns.fault = lambda token, attempt: fault
    running = await start(apns_config(tmp_path, apns, ca), clock=FakeClock(1_800_000_000))
    decision = await decide(running, apns_job([{"channel": "apns", "token": TOKEN}]))
    assert (decision["outcome"], decision["reason"]) == (outcome, reason)
    assert attempted(apns.attempts[TOKEN], attempts, outcome)
    assert len(set(apns.apns_ids)) == 1  # retries keep their apns-id


async def test_wrong_key_is_a_credentials_failure_not_a_dead_token(start, tmp_path, apns, ca, monkeypatch) -> None:
    monkeypatch.setenv("TEST_APNS_KEY", ApnsFake(apns.tls_context).key_pem())  # another team's key
    running = await start(apns_config(tmp_path, apns, ca))
    _, body, _ = await running.post(apns_job([{"channel": "apns", "token": TOKEN}]))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"], decision["detail"]) == (
        "failed",
        "credentials",
        "InvalidProviderToken",
    )
    assert "invalid_tokens" not in decision


async def test_a_silent_server_times_out(start, tmp_path, apns, ca, key_env) -> None:
    apns.fault = lambda token, attempt: ApnsFault(delay=5) if attempt == 1 else None
    running = await start(apns_config(tmp_path, apns, ca, timeout="200ms"))
    _, body, _ = await running.post(apns_job([{"channel": "apns", "token": TOKEN}]))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert decision["outcome"] == "sent" and apns.attempts[TOKEN] == 2, decision


async def test_oversize_body_is_shortened_and_oversize_title_fails(start, tmp_path, apns, ca, key_env) -> None:
    running = await start(apns_config(tmp_path, apns, ca))
    _, body, _ = await running.post(apns_job([{"channel": "apns", "token": TOKEN}], body="x" * 5000))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert decision["outcome"] == "sent" and "body shortened" in decision["detail"]
    _, body, _ = await running.post(apns_job([{"channel": "apns", "token": "c3" * 32}], title="T" * 5000))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("failed", "payload_too_large")
    assert "c3" * 32 not in apns.attempts  # no provider round trip


def test_config_checks_name_the_key(tmp_path, monkeypatch) -> None:
    from gateway.config import ConfigError, GatewayConfig
    from gateway.loader import channel_classes, configure_channels, plugin_manager

    monkeypatch.setenv("TEST_APNS_KEY", "not a pem")
    app = {"team_id": "T", "key_id": "K", "key": {"env": "TEST_APNS_KEY"}, "topic": "a"}
    monkeypatch.setenv(
        "TEST_RSA_KEY",
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode(),
    )
    config = GatewayConfig(
        channels={
            "apns": {
                "apps": {
                    "a": app,
                    "b": {**app, "topic": "com.shop\r\nx: y"},
                    "c2": {**app, "key": {"env": "TEST_RSA_KEY"}},
                },
                "default_app": "c22",
            }
        }
    )
    with pytest.raises(ConfigError) as err:
        configure_channels(config, channel_classes(plugin_manager(config)))
    assert "channels.apns.default_app: no app named 'c22' (did you mean 'c2'?)" in err.value.problems
    assert (
        "channels.apns.apps.b.topic: expected a bundle id (letters, digits, '.', '-', '_')" in err.value.problems
    )  # it goes into a header as it is
    assert "channels.apns.apps.a.key: expected the .p8 key in PEM form" in err.value.problems
    assert "channels.apns.apps.c2.key: not a readable P-256 private key (ES256 needs one)" in err.value.problems


async def test_a_dropped_connection_is_retried(start, tmp_path, apns, ca, key_env) -> None:
    apns.fault = lambda token, attempt: ApnsFault(drop=True) if attempt == 1 else None
    running = await start(apns_config(tmp_path, apns, ca, timeout="500ms"))
    _, body, _ = await running.post(apns_job([{"channel": "apns", "token": TOKEN}]))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"
    assert apns.attempts[TOKEN] == 2


async def test_a_collapse_key_with_a_line_break_fails_alone(start, tmp_path, apns, ca, key_env) -> None:
    """No header may carry one: that message fails, its batch goes on. (A literal one is a
    400 at intake; this one is rendered from the recipient's data.)"""
    running = await start(apns_config(tmp_path, apns, ca))
    job = apns_job([{"channel": "apns", "token": TOKEN}, {"channel": "apns", "token": "b2" * 32}])
    job["recipients"][0]["attributes"]["key"] = "a\nb"
    job["variants"].insert(
        0,
        {
            "name": "odd",
            "when": "attributes.n == 'N0'",
            "content": {"push": {"title": "x", "collapse_key": "{{ attributes.key }}"}},
        },
    )
    _, body, _ = await running.post(job)
    done = await running.wait(body["job_id"])
    assert [(d["outcome"], d.get("reason")) for d in done["decisions"]] == [
        ("failed", "invalid_request"),
        ("sent", None),
    ]
    assert [n.token for n in apns.received] == ["b2" * 32]


def test_the_provider_token_is_made_again_every_30_minutes(apns: ApnsFake) -> None:
    from plugins.apns import ProviderToken

    start = int(time.time()) - 3000  # PyJWT refuses an iat in the future
    now = [float(start)]
    token = ProviderToken(apns.team_id, apns.key_id, apns.key_pem(), now=lambda: now[0])
    first = token.current()
    claims = apns.verify({"authorization": first.decode(), "apns-topic": "com.shop.app"})
    assert isinstance(claims, dict) and claims["iat"] == start and claims["iss"] == apns.team_id
    now[0] += 29 * 60
    assert token.current() is first  # inside Apple's window: the same token (no TooManyProviderTokenUpdates)
    now[0] += 60
    second = token.current()
    assert second != first and jwt.decode(second[7:], options={"verify_signature": False})["iat"] == start + 1800


def test_apns_ids_are_the_delivery_ids_uuid5() -> None:
    from plugins.apns import _IDS, apns_id_for

    for delivery_id in ("j1:u1:apns:0", "", "é" * 40):
        assert apns_id_for(delivery_id) == str(uuid.uuid5(_IDS, delivery_id)).encode()
