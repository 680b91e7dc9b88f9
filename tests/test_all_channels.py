"""The shared cart example through all five channels, each fake asserting what arrived.

The example's web push subscriptions are replaced by the fake push service's (decrypting
needs the subscriber's private key, which the example's real keys do not come with);
everything else is the example as shipped. At 12:00Z, u-1002's Chicago morning is still in
quiet hours: those pushes are deferred to 08:00 local and released by the scheduler.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import trustme

from gateway.clock import FakeClock
from gateway.testing import ApnsFake, FcmFake, SmtpFake, WebhookReceiver, WebPushFake
from gateway.testing.examples import example_jobs
from tests.conftest import make_config

NOON = 1_764_331_200.0  # 2026-11-28T12:00:00Z
CHICAGO_8AM = NOON + 2 * 3600  # 14:00Z


async def test_cart_example_through_every_channel(start, tmp_path: Path, monkeypatch, speaker_secret) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    async with (
        ApnsFake(server_tls) as apns,
        FcmFake() as fcm,
        WebPushFake(tls_context=server_tls) as push,
        SmtpFake() as smtp,
        WebhookReceiver(speaker_secret) as hub,
    ):
        (tmp_path / "sa.json").write_text(json.dumps(fcm.service_account()))
        monkeypatch.setenv("T_APNS_KEY", apns.key_pem())
        from py_vapid import Vapid02

        vapid = Vapid02()
        vapid.generate_keys()
        monkeypatch.setenv("T_VAPID", vapid.private_pem().decode())
        monkeypatch.setenv("T_UNSUB", "unsubscribe-secret")
        config = make_config(tmp_path, hub.url, quiet_hours={"enabled": True, "spread": "0s"})
        ca_file = str(tmp_path / "ca.pem")
        config.channels.update(
            {
                "apns": {
                    "apps": {
                        "shop": {
                            "team_id": apns.team_id,
                            "key_id": apns.key_id,
                            "key": {"env": "T_APNS_KEY"},
                            "topic": "com.shop.app",
                        }
                    },
                    "endpoint": f"127.0.0.1:{apns.port}",
                    "ca_file": ca_file,
                },
                "fcm": {"service_account": {"file": str(tmp_path / "sa.json")}, "endpoint": fcm.url},
                "webpush": {
                    "vapid_private_key": {"env": "T_VAPID"},
                    "subject": "mailto:ops@shop.example",
                    "allowed_hosts": ["127.0.0.1:*"],
                    "allow_private_networks": True,
                    "ca_file": ca_file,
                },
                "email": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from_address": "news@shop.example",
                    "unsubscribe": {"url": "https://gw.example", "secret": {"env": "T_UNSUB"}},
                },
            }
        )
        clock = FakeClock(NOON)
        running = await start(config, clock=clock)

        job = json.loads(dict(example_jobs())["job-cart-reminder.json"])
        subscriptions = {}
        for recipient in job["recipients"]:
            for device in recipient["devices"]:
                if device["channel"] == "webpush":
                    device["subscription"] = subscriptions[recipient["user_id"]] = push.subscription()
        status, body, _ = await running.post(job)
        assert status == 202 and "warnings" not in body  # every channel is available
        waiting = await running.wait(body["job_id"], states=("waiting",))
        deferred = {(d["user_id"], d["channel"]) for d in waiting["decisions"] if d["outcome"] == "deferred"}
        assert deferred == {("u-1002", "apns"), ("u-1002", "fcm")}  # 06:00 in Chicago
        clock.t = CHICAGO_8AM
        assert await running.gateway.scheduler.run_due() == 2
        done = await running.wait(body["job_id"])

    decisions = {(d["user_id"], d["channel"]): d for d in done["decisions"]}
    outcome = {k: (d["outcome"], d.get("reason")) for k, d in decisions.items()}
    assert outcome[("u-1001", "apns")] == ("sent", None)
    assert outcome[("u-1001", "webpush")] == ("sent", None)
    assert outcome[("u-1001", "email")] == ("sent", None)
    assert outcome[("u-1001", "speaker")] == ("sent", None)
    assert outcome[("u-1002", "apns")] == outcome[("u-1002", "fcm")] == ("sent", None)
    assert outcome[("u-1002", "email")] == ("suppressed", "unsubscribed")
    assert outcome[("u-1003", "webpush")] == ("sent", None)
    assert outcome[("u-1003", "email")] == ("sent", None)
    assert outcome[("u-1004", "apns")] == ("suppressed", "unsubscribed")
    assert decisions[("u-1004", "apns")]["flags"] == ["timezone_fallback"]
    assert outcome[("u-1004", "email")] == ("sent", None)

    # What each provider received, decrypted and verified.
    (ana_ios,) = apns.to("10f664372eb64507f302365f72c2505cf196dca481810a65bcba8a6794e8b274")
    assert ana_ios.payload["aps"]["alert"]["title"] == "Ana, your cart is waiting"  # big-cart
    assert ana_ios.claims["iss"] == apns.team_id
    (mason_android,) = fcm.received
    assert mason_android["notification"]["body"] == "Your favourite picks are still in your cart."  # loyal
    assert len(apns.to("6cbe42cead2a4e4f55c82a1f5422feceda2b8623205d0fefb96355002901c0d1")) == 1
    (ana_web,) = push.to(subscriptions["u-1001"])
    assert ana_web.payload["title"] == "Ana, your cart is waiting" and ana_web.payload["url"] == "shop://cart"
    (somchai_web,) = push.to(subscriptions["u-1003"])
    assert somchai_web.payload["title"] == "Your cart is waiting"  # default
    (somchai_mail,) = smtp.to("somchai@example.com")
    assert somchai_mail.get_body(("plain",)).get_content().startswith("Hi there,")
    (ana_mail,) = smtp.to("ana@example.com")
    assert "express for free" in ana_mail.get_body(("html",)).get_content()
    assert ana_mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert smtp.to("mason@example.com") == []
    (speech,) = hub.received.values()
    assert speech.payload["speech"] == "Your cart is still waiting, and express shipping is free today."
    assert speech.payload["device_id"] == "kitchen"
