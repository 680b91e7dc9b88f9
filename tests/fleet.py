"""All five fake providers and a gateway configured for every channel, in an event loop of
their own (a background thread), with a gateway that can be stopped and started again on
the same store: what the isolation and crash property tests drive from sync hypothesis
tests. Faults are scripted per token/address/device through `hostile`."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.clock import Clock
from gateway.server import RunningServer, start_server
from gateway.testing import ApnsFault, FcmFault
from gateway.testing.fleet import CHANNELS, FakeFleet
from gateway.testing.webhook import Fault
from tests.conftest import API_KEY, make_config


class Fleet:
    def __init__(self, clock: Clock | None = None, **sections: Any):
        self.sections = sections
        self.clock = clock
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
        self.run(self.fakes.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        """A gateway on the fleet's store (a restart when one ran before)."""
        self.server = self.run(self._serve())

    async def _serve(self) -> RunningServer:
        """With a fake clock, the test drives the scheduler itself."""
        config = self.config()
        gateway = Gateway(config, clock=self.clock, run_background=False) if self.clock is not None else None
        return await start_server(config, gateway)

    def stop(self) -> None:
        """SIGTERM's path: intake stops, batches under way finish and record."""
        if self.server is not None:
            self.run(self.server.stop())
            self.server = None

    # -- the fakes ------------------------------------------------------------------------
    async def _start_fakes(self) -> None:
        self.fakes = FakeFleet(self.tmp / "fakes", env_prefix="F")
        self.fakes.answer = lambda channel, key, attempt: self.hostile.get(key)
        await self.fakes.start()
        os.environ["GATEWAY_TEST_API_KEYS"] = API_KEY
        self.apns, self.fcm, self.push = self.fakes.apns, self.fakes.fcm, self.fakes.push
        self.smtp, self.hub, self.secret = self.fakes.smtp, self.fakes.hub, self.fakes.secret

    def config(self) -> Any:
        config = make_config(self.tmp, **self.sections)
        config.channels.update(self.fakes.channels_config(timeout="5s"))
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
        retrier = self.server.gateway.pipeline.dispatcher
        return [c for c in CHANNELS if retrier.any_open(c)]


# Hostile answers, as the fakes take them.
def apns_fault(reason: str, status: int = 400) -> ApnsFault:
    return ApnsFault(status=status, reason=reason)


def fcm_fault(code: str, status: int) -> FcmFault:
    return FcmFault(status=status, error_code=code)


def hub_fault(status: int) -> Fault:
    return Fault(status=status)
