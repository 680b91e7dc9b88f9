"""All five fake providers at once, with the config that points a gateway at them: what the
fault tests, the fault benchmarks and the demo's operators drive.

    fleet = FakeFleet(Path("/tmp/fakes"))
    await fleet.start()            # in the running loop; writes the CA and service account there
    print(fleet.channels_toml())   # [channels.*] tables for a gateway.toml
    fleet.answer = lambda channel, key, attempt: fleet.hold(channel) if key == "u7" else None

Faults are scripted per channel and per device or address (`answer`), in each fake's own
terms (an `ApnsFault`, an SMTP reply, ...), or with `hold(channel)`, an answer that never
comes (the request stays in flight). What each provider received is counted per device or
address (`copies`), with the requests received but not answered yet (`in_flight`).
"""

from __future__ import annotations

import json
import os
import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.testing.apns import ApnsFake, ApnsFault
from gateway.testing.fcm import FcmFake, FcmFault
from gateway.testing.smtp import SmtpFake
from gateway.testing.webhook import Fault, WebhookReceiver, new_secret
from gateway.testing.webpush import WebPushFake, WebPushFault

CHANNELS = ("apns", "fcm", "webpush", "email", "speaker")
HOLD_SECONDS = 3600.0
# channel, device or address key, attempt -> the fake's fault, or None: answer normally
Answer = Callable[[str, str, int], Any]


class FakeFleet:
    def __init__(self, directory: Path, latency: float = 0.0, env_prefix: str = "FAKES", independent: bool = False):
        """`independent`: the fakes on libraries the gateway's clients share nothing
        with (h2's server for APNs, aiohttp's for the HTTP/1.1 ones)."""
        self.independent = independent
        self.dir = directory
        self.latency = latency  # every answer waits this long
        self.env = env_prefix
        self.answer: Answer | None = None
        self.down: set[str] = set()  # channels whose provider does not answer at all

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        import trustme
        from py_vapid import Vapid02

        self.dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        self.secret = new_secret()
        h2, http1 = ("h2", "aiohttp") if self.independent else ("gateway", "gateway")
        self.apns = ApnsFake(tls, fault=lambda token, n: self._fault("apns", token, n), engine=h2)
        self.fcm = FcmFake(fault=lambda token, n: self._fault("fcm", token, n), engine=http1)
        self.push = WebPushFake(tls_context=tls, fault=lambda sub, n: self._fault("webpush", sub, n), engine=http1)
        self.smtp = SmtpFake(fault=lambda address, n: self._fault("email", address, n))
        self.hub = WebhookReceiver(
            self.secret, fault=lambda payload, n: self._fault("speaker", payload["device_id"], n), engine=http1
        )
        for fake in self.fakes.values():
            await fake.start()
        (self.dir / "sa.json").write_text(json.dumps(self.fcm.service_account()))
        vapid = Vapid02()
        vapid.generate_keys()
        os.environ.update(
            {
                f"{self.env}_APNS_KEY": self.apns.key_pem(),
                f"{self.env}_VAPID_KEY": vapid.private_pem().decode(),
                f"{self.env}_SPEAKER_SECRET": self.secret,
                f"{self.env}_UNSUBSCRIBE_SECRET": "unsubscribe-secret",
            }
        )

    async def stop(self) -> None:
        for fake in self.fakes.values():
            await fake.stop()

    @property
    def fakes(self) -> dict[str, Any]:
        return {"apns": self.apns, "fcm": self.fcm, "webpush": self.push, "email": self.smtp, "speaker": self.hub}

    # -- answers ----------------------------------------------------------------------------
    def _fault(self, channel: str, key: str, attempt: int) -> Any:
        if channel in self.down:
            return self.hold(channel)
        fault = self.answer(channel, key, attempt) if self.answer else None
        if fault is None and self.latency:
            return self.delay(channel, self.latency)
        return fault

    def hold(self, channel: str) -> Any:
        """An answer that does not come (within the hour): the request stays in flight."""
        return self.delay(channel, HOLD_SECONDS)

    @staticmethod
    def delay(channel: str, seconds: float) -> Any:
        """A normal answer, `seconds` late, as the channel's fake takes it."""
        if channel == "apns":
            return ApnsFault(delay=seconds)
        if channel == "fcm":
            return FcmFault(delay=seconds)
        if channel == "webpush":
            return WebPushFault(delay=seconds)
        if channel == "email":
            return seconds
        return Fault(delay=seconds)

    # -- what the providers got ----------------------------------------------------------
    def copies(self, channel: str) -> Counter[str]:
        """Deliveries the provider accepted, per device or address (over 1: duplicates)."""
        if channel == "apns":
            return Counter(n.token for n in self.apns.received)
        if channel == "fcm":
            return Counter(m["token"] for m in self.fcm.received)
        if channel == "webpush":
            return Counter(p.subscription_id for p in self.push.received)
        if channel == "email":
            return Counter(a for mail in self.smtp.received for a in mail.rcpt_tos)
        return Counter({r.payload["device_id"]: r.copies for r in self.hub.received.values()})

    def requests(self, channel: str) -> int:
        """Requests the provider has received so far, answered or not."""
        return sum(self.fakes[channel].attempts.values())

    def answered(self, channel: str) -> int:
        return sum(self.copies(channel).values())

    def in_flight(self, channel: str) -> int:
        """Received and not answered (yet)."""
        return self.requests(channel) - self.answered(channel)

    # -- jobs -------------------------------------------------------------------------------
    def recipient(self, channel: str, n: int) -> dict[str, Any]:
        """Recipient `n`, reachable on `channel` by a key of its own (`key(channel, n)`)."""
        r: dict[str, Any] = {"user_id": f"u{n}", "devices": []}
        if channel in ("apns", "fcm"):
            r["devices"] = [{"channel": channel, "token": self.key(channel, n)}]
        elif channel == "webpush":
            r["devices"] = [{"channel": "webpush", "subscription": self.push.subscription(self.key(channel, n))}]
        elif channel == "email":
            r["email"] = self.key(channel, n)
        else:
            r["devices"] = [{"channel": "speaker", "target": "home-hub", "device_id": self.key(channel, n)}]
        return r

    @staticmethod
    def job(channels: list[str], recipients: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """A send job with content for every kind of channel (transactional unless `fields`
        say otherwise)."""
        content = {
            "push": {"title": "Hi", "body": "Order {{ user_id }}"},
            "email": {"subject": "Hi", "text": "Hello"},
            "speaker": {"speech": "Hi {{ user_id }}"},
        }
        return {
            "campaign": "fakes",
            "category": "transactional",
            "channels": channels,
            "variants": [{"name": "d", "content": content}],
            "recipients": recipients,
            **fields,
        }

    @staticmethod
    def key(channel: str, n: int) -> str:
        """What the channel's fake knows recipient `n` by."""
        if channel in ("apns", "fcm"):
            return f"{n:064x}"
        if channel == "email":
            return f"u{n}@example.com"
        return f"d{n}"

    # -- config -----------------------------------------------------------------------------
    def channels_toml(self, channels: tuple[str, ...] = CHANNELS, timeout: str = "10s") -> str:
        """The [channels.*] tables of a gateway.toml pointing at these fakes."""
        ca, sa, env = self.dir / "ca.pem", self.dir / "sa.json", self.env
        tables = {
            "apns": [
                f'timeout = "{timeout}"',
                f'endpoint = "127.0.0.1:{self.apns.port}"',
                f'ca_file = "{ca}"',
                "[channels.apns.apps.shop]",
                f'team_id = "{self.apns.team_id}"',
                f'key_id = "{self.apns.key_id}"',
                f'key = {{ env = "{env}_APNS_KEY" }}',
                'topic = "com.shop.app"',
            ],
            "fcm": [f'timeout = "{timeout}"', f'service_account = {{ file = "{sa}" }}', f'endpoint = "{self.fcm.url}"'],
            "webpush": [
                f'timeout = "{timeout}"',
                f'vapid_private_key = {{ env = "{env}_VAPID_KEY" }}',
                'subject = "mailto:ops@shop.example"',
                'allowed_hosts = ["127.0.0.1:*"]',
                "allow_private_networks = true",
                f'ca_file = "{ca}"',
            ],
            "email": [
                f'timeout = "{timeout}"',
                'host = "127.0.0.1"',
                f"port = {self.smtp.port}",
                'security = "none"',
                'from_address = "news@shop.example"',
                f'unsubscribe = {{ url = "https://gw.example", secret = {{ env = "{env}_UNSUBSCRIBE_SECRET" }} }}',
            ],
            "speaker": [
                "[channels.speaker.targets.home-hub]",
                f'url = "{self.hub.url}/hooks/home-hub"',
                f'secret = {{ env = "{env}_SPEAKER_SECRET" }}',
                f'timeout = "{timeout}"',
            ],
        }
        return "".join("\n".join([f"[channels.{name}]", *tables[name]]) + "\n" for name in channels)

    def channels_config(self, channels: tuple[str, ...] = CHANNELS, timeout: str = "10s") -> dict[str, Any]:
        """The same, as the `channels` table of a config dict."""
        import tomllib

        return dict(tomllib.loads(self.channels_toml(channels, timeout))["channels"])
