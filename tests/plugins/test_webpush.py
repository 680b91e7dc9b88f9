"""Web push against a local push service over TLS that decrypts and verifies VAPID."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from py_vapid import Vapid02

from gateway.clock import FakeClock
from gateway.testing.webpush import WebPushFake, WebPushFault
from plugins.webpush import topic_for
from tests.conftest import epoch, make_config
from tests.plugins.tables import attempted, decide


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def push(ca: trustme.CA) -> AsyncIterator[WebPushFake]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with WebPushFake(tls_context=context) as fake:
        yield fake


@pytest.fixture
def vapid_env(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Vapid02()
    key.generate_keys()
    monkeypatch.setenv("TEST_VAPID_KEY", key.private_pem().decode())


def push_config(tmp_path: Path, ca: trustme.CA, **extra: Any) -> Any:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = make_config(tmp_path)
    config.channels["webpush"] = {
        "vapid_private_key": {"env": "TEST_VAPID_KEY"},
        "subject": "mailto:ops@shop.example",
        "allowed_hosts": ["127.0.0.1:*"],
        "allow_private_networks": True,
        "ca_file": str(tmp_path / "ca.pem"),
        **extra,
    }
    return config


def push_job(subscriptions: list[dict[str, Any]], category: str = "transactional", **push: Any) -> dict[str, Any]:
    content = {
        "title": "Hi {{ attributes.n }}",
        "body": "Your cart",
        "deep_link": "https://shop.example/cart",
        "collapse_key": "cart:1",
        **push,
    }
    return {
        "campaign": "c",
        "category": category,
        "channels": ["webpush"],
        "variants": [{"name": "d", "content": {"push": content}}],
        "recipients": [
            {
                "user_id": f"u{i}",
                "attributes": {"n": f"N{i}"},
                "subscriptions": {"push": "opted_in"},
                "devices": [{"channel": "webpush", "subscription": s}],
            }
            for i, s in enumerate(subscriptions)
        ],
    }


async def test_encrypted_payload_and_vapid_per_origin(start, tmp_path, push, ca, vapid_env) -> None:
    running = await start(push_config(tmp_path, ca))
    subscriptions = [push.subscription() for _ in range(5)]
    _, body, _ = await running.post(push_job(subscriptions))
    done = await running.wait(body["job_id"])
    assert {d["outcome"] for d in done["decisions"]} == {"sent"} and not push.rejected
    (first,) = push.to(subscriptions[0])
    assert first.payload == {"title": "Hi N0", "body": "Your cart", "url": "https://shop.example/cart", "tag": "cart:1"}
    assert first.headers["Urgency"] == "high"  # transactional
    # RFC 8030: "cart:1" is outside the Topic alphabet, so it is hashed into 32 of its characters
    assert first.headers["Topic"] == topic_for("cart:1")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", first.headers["Topic"])
    assert int(first.headers["TTL"]) == 2419200
    assert first.vapid_claims["sub"] == "mailto:ops@shop.example"
    assert running.gateway.channels["webpush"].signatures == 1  # one VAPID token for the origin
    bodies = {p.headers.get("Content-Length") for p in push.received}
    assert bodies  # each message encrypted on its own (fresh salt and key): decryptable only by its subscriber


async def test_marketing_uses_the_configured_urgency(start, tmp_path, push, ca, vapid_env) -> None:
    running = await start(push_config(tmp_path, ca, urgency="low"))
    subscription = push.subscription()
    _, body, _ = await running.post(push_job([subscription], category="marketing"))
    await running.wait(body["job_id"])
    assert push.to(subscription)[0].headers["Urgency"] == "low"


TABLE = [
    (WebPushFault(404), "invalid_token", "subscription_gone", 1),
    (WebPushFault(410), "invalid_token", "subscription_gone", 1),
    (WebPushFault(413), "failed", "payload_too_large", 1),
    (WebPushFault(429, retry_after="5"), "deferred", "retrying", 1),
    (WebPushFault(500), "deferred", "retrying", 2),
    (WebPushFault(503), "deferred", "retrying", 2),
    (WebPushFault(400), "failed", "http_400", 1),
    (WebPushFault(401), "failed", "http_401", 1),
    (WebPushFault(403), "failed", "http_403", 1),
]


@pytest.mark.parametrize(("fault", "outcome", "reason", "attempts"), TABLE, ids=[str(t[0].status) for t in TABLE])
async def test_status_table(start, tmp_path, push, ca, vapid_env, fault, outcome, reason, attempts) -> None:
    push.fault = lambda sub_id, attempt: fault
    clock = FakeClock(1_800_000_000)
    running = await start(push_config(tmp_path, ca), clock=clock)
    subscription = push.subscription()
    decision = await decide(running, push_job([subscription]))
    assert (decision["outcome"], decision["reason"]) == (outcome, reason)
    assert attempted(sum(push.attempts.values()), attempts, outcome)
    if outcome == "invalid_token":
        assert decision["invalid_tokens"] == [subscription["endpoint"]]
    if fault.retry_after:  # past the in-memory window: the next attempt waits in the store
        assert epoch(decision["until"]) >= 1_800_000_000 + 5


@pytest.mark.parametrize(
    ("allowed", "endpoint_of", "message"),
    [
        (["*.push.example.net"], lambda e: e, "is not in [channels.webpush] allowed_hosts"),
        (["127.0.0.1"], lambda e: e, "is not in [channels.webpush] allowed_hosts"),  # port 443 only
        (["127.0.0.1:*"], lambda e: e.replace("https://", "https://u:p@"), "no user name or password"),
        (["127.0.0.1:*"], lambda e: e.replace("https://", "http://"), "expected an https://"),
    ],
)
async def test_endpoints_the_config_does_not_allow_are_400s_at_intake(
    start, tmp_path, push, ca, vapid_env, allowed, endpoint_of, message
) -> None:
    running = await start(push_config(tmp_path, ca, allowed_hosts=allowed))
    subscription = push.subscription()
    subscription["endpoint"] = endpoint_of(subscription["endpoint"])
    status, body, _ = await running.post(push_job([subscription]))
    assert status == 400 and body["path"] == "$.recipients[0].devices[0].subscription.endpoint", body
    assert message in body["message"]
    assert not push.attempts


async def test_the_channel_refuses_endpoints_outside_its_allow_list_at_send_time(push, ca, vapid_env) -> None:
    """The backstop for a job accepted elsewhere under another config: a permanent failure
    for that delivery alone, and no request."""
    from gateway.model.delivery import Delivery
    from gateway.model.job import Device, PushContent, WebPushSubscription
    from plugins.webpush import WebPushChannel, WebPushConfig

    config = WebPushConfig(
        vapid_private_key={"env": "TEST_VAPID_KEY"},
        subject="mailto:o@x.example",  # type: ignore[arg-type]
        allowed_hosts=["push.example.net"],
    )
    import msgspec

    config = msgspec.convert(msgspec.to_builtins(config), WebPushConfig)
    channel = await WebPushChannel.create(config)
    sub = msgspec.convert(push.subscription(), WebPushSubscription)
    delivery = Delivery(
        id="j.0.webpush.0",
        job_id="j",
        campaign="c",
        category="marketing",
        recipient=0,
        user_id="u",
        channel="webpush",
        to=Device(channel="webpush", subscription=sub),
        content=PushContent(title="t"),
    )
    (result,) = await channel.send_batch([delivery])
    await channel.aclose()
    assert result.reason == "endpoint_not_allowed"  # type: ignore[union-attr]
    assert not push.attempts


async def test_long_body_is_shortened_to_fit(start, tmp_path, push, ca, vapid_env) -> None:
    running = await start(push_config(tmp_path, ca))
    subscription = push.subscription()
    _, body, _ = await running.post(push_job([subscription], body="é" * 3000))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert decision["outcome"] == "sent" and "body shortened" in decision["detail"]
    assert push.to(subscription)[0].payload["body"].endswith("\u2026")


def test_a_bad_vapid_key_is_a_config_error(tmp_path, monkeypatch) -> None:
    from gateway.config import ConfigError, GatewayConfig
    from gateway.loader import channel_classes, configure_channels, plugin_manager

    monkeypatch.setenv("TEST_VAPID_KEY", "not a key")
    config = GatewayConfig(
        channels={"webpush": {"vapid_private_key": {"env": "TEST_VAPID_KEY"}, "subject": "ops@shop.example"}}
    )
    with pytest.raises(ConfigError) as err:
        configure_channels(config, channel_classes(plugin_manager(config)))
    assert err.value.problems[0].startswith("channels.webpush.vapid_private_key: not a P-256 private key")
    assert err.value.problems[1] == "channels.webpush.subject: expected a mailto: or https: URI"


@pytest.mark.parametrize("fault", [WebPushFault(drop=True), WebPushFault(delay=1.0)], ids=["drop", "slow"])
async def test_dropped_or_slow_requests_are_retried(start, tmp_path, push, ca, vapid_env, fault) -> None:
    push.fault = lambda sub_id, attempt: fault if attempt == 1 else None
    running = await start(push_config(tmp_path, ca, timeout="200ms"))
    subscription = push.subscription()
    _, body, _ = await running.post(push_job([subscription]))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"
    assert len(push.to(subscription)) == 1


async def test_encryption_in_worker_processes(start, tmp_path, push, ca, vapid_env) -> None:
    running = await start(push_config(tmp_path, ca, encrypt_workers=1))
    subscriptions = [push.subscription() for _ in range(3)]
    _, body, _ = await running.post(push_job(subscriptions))
    done = await running.wait(body["job_id"], timeout=60)
    assert {d["outcome"] for d in done["decisions"]} == {"sent"}
    assert [p.payload["title"] for s in subscriptions for p in push.to(s)] == ["Hi N0", "Hi N1", "Hi N2"]


async def test_the_fake_checks_every_vapid_token(push, ca) -> None:
    """The push service verifies each token's signature once, and its claims on every request."""
    import base64
    import time

    import aiohttp
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from pywebpush import WebPusher

    subscription = push.subscription()
    body = WebPusher(subscription).encode(b'{"title": "x"}', "aes128gcm")["body"]
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    k = base64.urlsafe_b64encode(point).decode().rstrip("=")

    def vapid(signer: ec.EllipticCurvePrivateKey = key, **claims: Any) -> str:
        good = {"aud": push.origin, "exp": int(time.time()) + 3600, "sub": "mailto:ops@shop.example"}
        return f"vapid t={jwt.encode({**good, **claims}, signer, algorithm='ES256')},k={k}"

    token = vapid()
    cases = [
        (token, 201),
        (token, 201),  # the same token twice: its signature checked once
        (vapid(aud="https://elsewhere.example"), 401),
        (vapid(exp=int(time.time()) - 10), 401),
        (vapid(exp=int(time.time()) + 2 * 86400), 401),
        (vapid(sub="ops@shop.example"), 401),
        (vapid(other), 401),
    ]  # signed by another key than the one presented
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    async with aiohttp.ClientSession() as http:
        for authorization, status in cases:
            headers = {"Authorization": authorization, "TTL": "60", "Content-Encoding": "aes128gcm"}
            async with http.post(subscription["endpoint"], data=body, headers=headers, ssl=context) as r:
                assert r.status == status, (authorization, await r.text())
    assert len(push.received) == 2 and len(push.rejected) == 5


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "worker-process"])
async def test_a_subscription_with_bad_keys_is_reported_dead(start, tmp_path, push, ca, vapid_env, workers) -> None:
    good, bad = push.subscription(), push.subscription()
    bad["keys"]["p256dh"] = "bm90IGEga2V5"  # not a P-256 point
    running = await start(push_config(tmp_path, ca, encrypt_workers=workers))
    _, body, _ = await running.post(push_job([bad, good]))
    done = await running.wait(body["job_id"], timeout=60)
    (first, second) = done["decisions"]
    assert first["outcome"] == "invalid_token" and first["reason"].startswith("bad_subscription_keys: ")
    assert first["invalid_tokens"] == [bad["endpoint"]]
    assert second["outcome"] == "sent" and [p.payload["title"] for p in push.to(good)] == ["Hi N1"]


async def test_a_push_service_on_a_private_address_is_not_called_unless_allowed(
    start, tmp_path, push, ca, vapid_env
) -> None:
    """The endpoint comes from a job: by default the names it uses must resolve to public
    addresses (here 127.0.0.1: refused before any connection is made)."""
    running = await start(push_config(tmp_path, ca, allow_private_networks=False))
    _, body, _ = await running.post(push_job([push.subscription()]))
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("failed", "address_not_allowed")
    assert not push.attempts


async def test_push_service_pools_are_per_origin_bounded_and_closed_when_idle(push, ca, vapid_env, tmp_path) -> None:
    """400 endpoints differing in user info once made 400 pools (and file descriptors):
    pools are per origin (user info is refused), at most max_origins, idle ones closed."""
    import msgspec

    from gateway.model.delivery import Delivery
    from gateway.model.job import Device, PushContent, WebPushSubscription
    from plugins.webpush import WebPushChannel, WebPushConfig

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    raw = {
        "vapid_private_key": {"env": "TEST_VAPID_KEY"},
        "subject": "mailto:o@x.example",
        "allowed_hosts": ["127.0.0.1:*", "localhost:*"],
        "allow_private_networks": True,
        "ca_file": str(tmp_path / "ca.pem"),
        "max_origins": 1,
        "idle_origin": "0s",
    }
    channel = await WebPushChannel.create(msgspec.convert(raw, WebPushConfig))

    def delivery(endpoint: str, n: int) -> Delivery:
        sub = msgspec.convert(push.subscription(), WebPushSubscription)
        sub = msgspec.structs.replace(sub, endpoint=sub.endpoint.replace("127.0.0.1", endpoint))
        return Delivery(
            id=f"j.{n}.webpush.0",
            job_id="j",
            campaign="c",
            category="marketing",
            recipient=n,
            user_id="u",
            channel="webpush",
            to=Device(channel="webpush", subscription=sub),
            content=PushContent(title="t"),
        )

    try:
        for n, host in enumerate(["127.0.0.1", "127.0.0.1", "localhost", "127.0.0.1"]):
            (result,) = await channel.send_batch([delivery(host, n)])
            assert result.__class__.__name__ in ("Sent", "TransientFailure"), result  # localhost: not on the cert
            assert len(channel.connections) <= 1
    finally:
        await channel.aclose()
