"""All five fake providers and a gateway configured for every channel, in an event loop of
their own (a background thread), with a gateway that can be stopped and started again on
the same store: what the isolation and crash property tests drive from sync hypothesis
tests. Faults are scripted per token/address/device through `hostile`."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import trustme
from py_vapid import Vapid02

from gateway.server import RunningServer, start_server
from gateway.testing import ApnsFake, ApnsFault, FcmFake, FcmFault, SmtpFake, WebhookReceiver, WebPushFake, new_secret
from gateway.testing.webhook import Fault
from tests.conftest import API_KEY, make_config

CHANNELS = ("apns", "fcm", "webpush", "email", "speaker")


class Fleet:
    def __init__(self, **sections: Any):
        self.sections = sections
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="gateway-fleet-"))
        # token / address / device id -> what its provider answers, set by a test
        self.hostile: dict[str, Any] = {}
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    # -- lifecycle (from the test's thread) ---------------------------------------------
    def __enter__(self) -> Fleet:
        self._thread.start()
        self.run(self._start_fakes())
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.run(self._stop_fakes())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        """A gateway on the fleet's store (a restart when one ran before)."""
        self.server = self.run(start_server(self.config()))

    def stop(self) -> None:
        """SIGTERM's path: intake stops, batches under way finish and record."""
        if self.server is not None:
            self.run(self.server.stop())
            self.server = None

    # -- the fakes ------------------------------------------------------------------------
    async def _start_fakes(self) -> None:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.tmp / "ca.pem"))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        self.secret = new_secret()
        self.apns = ApnsFake(tls, fault=lambda token, n: self.hostile.get(token))
        self.fcm = FcmFake(fault=lambda token, n: self.hostile.get(token))
        self.push = WebPushFake(tls_context=tls, fault=lambda sub, n: self.hostile.get(sub))
        self.smtp = SmtpFake(fault=lambda address, n: self.hostile.get(address))
        self.hub = WebhookReceiver(self.secret, fault=lambda payload, n: self.hostile.get(payload["device_id"]))
        for fake in (self.apns, self.fcm, self.push, self.smtp, self.hub):
            await fake.start()
        (self.tmp / "sa.json").write_text(json.dumps(self.fcm.service_account()))
        vapid = Vapid02()
        vapid.generate_keys()
        os.environ.update(
            F_APNS_KEY=self.apns.key_pem(),
            F_VAPID=vapid.private_pem().decode(),
            F_UNSUB="unsubscribe-secret",
            GATEWAY_TEST_SPEAKER_SECRET=self.secret,
            GATEWAY_TEST_API_KEYS=API_KEY,
        )

    async def _stop_fakes(self) -> None:
        for fake in (self.apns, self.fcm, self.push, self.smtp, self.hub):
            await fake.stop()

    def config(self) -> Any:
        config = make_config(self.tmp, self.hub.url, **self.sections)
        ca_file = str(self.tmp / "ca.pem")
        config.channels.update(
            {
                "apns": {
                    "apps": {
                        "shop": {
                            "team_id": self.apns.team_id,
                            "key_id": self.apns.key_id,
                            "key": {"env": "F_APNS_KEY"},
                            "topic": "com.shop.app",
                        }
                    },
                    "endpoint": f"127.0.0.1:{self.apns.port}",
                    "ca_file": ca_file,
                    "timeout": "5s",
                },
                "fcm": {
                    "service_account": {"file": str(self.tmp / "sa.json")},
                    "endpoint": self.fcm.url,
                    "timeout": "5s",
                },
                "webpush": {
                    "vapid_private_key": {"env": "F_VAPID"},
                    "subject": "mailto:ops@shop.example",
                    "allowed_hosts": ["127.0.0.1:*"],
                    "allow_private_networks": True,
                    "ca_file": ca_file,
                    "timeout": "5s",
                },
                "email": {
                    "host": "127.0.0.1",
                    "port": self.smtp.port,
                    "security": "none",
                    "from_address": "news@shop.example",
                    "timeout": "5s",
                    "unsubscribe": {"url": "https://gw.example", "secret": {"env": "F_UNSUB"}},
                },
            }
        )
        return config

    # -- what the providers got ---------------------------------------------------------
    def receipts(self) -> dict[str, int]:
        """Deliveries each device or address received, by its token / subscription id /
        address / speaker device id."""

        async def count() -> dict[str, int]:
            got: dict[str, int] = {}
            names = [n.token for n in self.apns.received]
            names += [m["token"] for m in self.fcm.received]
            names += [p.subscription_id for p in self.push.received]
            names += [a for mail in self.smtp.received for a in mail.rcpt_tos]
            names += [r.payload["device_id"] for r in self.hub.received.values() for _ in range(r.copies)]
            for name in names:
                got[name] = got.get(name, 0) + 1
            return got

        return dict(self.run(count()))

    # -- HTTP, blocking ------------------------------------------------------------------
    def post(self, job: Any) -> tuple[int, Any]:
        return self.run(self._request("POST", "/v1/jobs", job))  # type: ignore[no-any-return]

    def status(self, job_id: str) -> Any:
        return self.run(self._request("GET", f"/v1/jobs/{job_id}?limit=1000"))[1]

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import aiohttp

        assert self.server is not None
        async with aiohttp.ClientSession(self.server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            async with http.request(method, path, json=body) as r:
                return r.status, await r.json()

    def breakers_open(self) -> list[str]:
        assert self.server is not None
        retrier = self.server.gateway.pipeline.retrier
        return [c for c in CHANNELS if retrier.any_open(c)]


# Hostile answers, as the fakes take them.
def apns_fault(reason: str, status: int = 400) -> ApnsFault:
    return ApnsFault(status=status, reason=reason)


def fcm_fault(code: str, status: int) -> FcmFault:
    return FcmFault(status=status, error_code=code)


def hub_fault(status: int) -> Fault:
    return Fault(status=status)
