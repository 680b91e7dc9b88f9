"""Every channel end to end, with our clients and with the library-backed ones, against
the usual fakes and against fakes built on implementations our clients share nothing with
(h2's server for APNs, aiohttp's for the HTTP/1.1 channels): our client and our server
never only vouch for each other."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.testing.fleet import CHANNELS, FakeFleet
from tests.conftest import make_config

LIBRARY = {"apns": "aioapns", "fcm": "aiohttp", "webpush": "aiohttp", "speaker": "aiohttp"}


@pytest.mark.parametrize("independent", [False, True], ids=["our-fakes", "independent-fakes"])
@pytest.mark.parametrize("library", [False, True], ids=["our-clients", "library-clients"])
async def test_every_channel_delivers_and_reports_dead_tokens(
    start, tmp_path, independent: bool, library: bool
) -> None:
    fleet = FakeFleet(tmp_path / "fakes", independent=independent)
    await fleet.start()
    dead = {fleet.key(c, 1) for c in CHANNELS}
    fleet.answer = lambda channel, key, attempt: _dead(fleet, channel) if key in dead else None
    try:
        config = make_config(tmp_path)
        channels = fleet.channels_config(timeout="5s")
        if library:
            for name, kind in LIBRARY.items():
                channels[name]["transport"] = kind
        config.channels.update(channels)
        running = await start(config)
        apns, speaker = running.gateway.channels["apns"], running.gateway.channels["speaker"]
        kinds = {type(p).__name__ for p in apns.pools.values()} | {
            type(t.pool).__name__ for t in speaker.targets.values()
        }
        assert kinds == ({"AioapnsPool", "AiohttpPool"} if library else {"Http2Pool", "Http1Pool"})
        recipients = [fleet.recipient(c, n) for c in CHANNELS for n in (0, 1)]
        for i, r in enumerate(recipients):
            r["user_id"] = f"u{i}"
        status, body, _ = await running.post(fleet.job(list(CHANNELS), recipients, routing="first"))
        assert status == 202, body
        done = await running.wait(body["job_id"], timeout=30)
        reached = {(d["user_id"], d["channel"]): d for d in done["decisions"] if d["outcome"] != "suppressed"}
        for i, channel in enumerate(c for c in CHANNELS for _ in (0, 1)):
            decision = reached[(f"u{i}", channel)]
            expected = "invalid_token" if i % 2 else "sent"
            assert decision["outcome"] == expected, (channel, independent, library, decision)
        for channel in CHANNELS:
            assert set(fleet.copies(channel)) == {fleet.key(channel, 0)}, channel
    finally:
        await fleet.stop()


def _dead(fleet: FakeFleet, channel: str) -> Any:
    from gateway.testing import ApnsFault, FcmFault, WebPushFault
    from gateway.testing.webhook import Fault

    return {
        "apns": ApnsFault(410, "Unregistered"),
        "fcm": FcmFault(404, "UNREGISTERED"),
        "webpush": WebPushFault(410),
        "email": "550 5.1.1 no such user",
        "speaker": Fault(410),
    }[channel]
