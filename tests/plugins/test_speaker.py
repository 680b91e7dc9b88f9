"""The speaker webhook channel against the local receiver, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from aiohttp import web

from gateway.clock import FakeClock
from gateway.testing import Fault
from tests.conftest import epoch, make_config, speaker_job
from tests.plugins.tables import attempted, decide


def independent_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec for this test only."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = headers["webhook-id"] + "." + headers["webhook-timestamp"] + "." + body.decode()
    digest = base64.b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest()).decode()
    return any(sig == "v1," + digest for sig in headers["webhook-signature"].split())


async def test_signature_verifies_independently(start, receiver, speaker_secret, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    _, body, _ = await running.post(speaker_job(3))
    await running.wait(body["job_id"])
    assert len(receiver.received) == 3
    for item in receiver.received.values():
        assert independent_verify(speaker_secret, item.headers, item.raw)
        assert abs(int(item.headers["webhook-timestamp"]) - time.time()) < 60
        assert item.headers["webhook-id"].startswith(body["job_id"])
        assert item.payload["speech"].startswith("Hello N")
        assert item.payload["target"] == "home-hub"
    assert not independent_verify("whsec_" + base64.b64encode(b"wrong").decode(), item.headers, item.raw)


async def test_receiver_rejects_a_wrong_secret(start, receiver, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_SPEAKER_SECRET", "whsec_" + base64.b64encode(b"not the secret").decode())
    running = await start(make_config(tmp_path, receiver.url))
    _, body, _ = await running.post(speaker_job(1))
    done = await running.wait(body["job_id"])
    assert done["decisions"][0]["outcome"] == "failed"
    assert done["decisions"][0]["reason"] == "http_401"
    assert receiver.rejected == ["no valid signature"]


# (receiver behaviour on every attempt, expected outcome, expected reason, attempts made)
TABLE: list[tuple[str, Fault, str, str | None, int]] = [
    ("200", Fault(200), "sent", None, 1),
    ("202", Fault(202), "sent", None, 1),
    ("204", Fault(204), "sent", None, 1),
    ("301 not followed", Fault(301), "failed", "redirect_refused", 1),
    ("400", Fault(400), "failed", "http_400", 1),
    ("401", Fault(401), "failed", "http_401", 1),
    ("403", Fault(403), "failed", "http_403", 1),
    ("404", Fault(404), "failed", "http_404", 1),
    ("410 target gone", Fault(410), "invalid_token", "target_gone", 1),
    ("413", Fault(413), "failed", "http_413", 1),
    ("429 retried", Fault(429, retry_after="2"), "deferred", "retrying", 1),
    ("500 retried", Fault(500), "deferred", "retrying", 2),
    ("502 retried", Fault(502), "deferred", "retrying", 2),
    ("503 retried", Fault(503), "deferred", "retrying", 2),
    ("504 retried", Fault(504), "deferred", "retrying", 2),
    ("dropped connection retried", Fault(drop=True), "deferred", "retrying", 2),
]


@pytest.mark.parametrize(("fault", "outcome", "reason", "attempts"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
async def test_response_table(
    start, receiver, tmp_path, fault: Fault, outcome: str, reason: str | None, attempts: int
) -> None:
    receiver.fault = lambda payload, attempt: fault
    clock = FakeClock(start=time.time())
    started = clock.now()
    running = await start(make_config(tmp_path, receiver.url), clock=clock)
    decision = await decide(running, speaker_job(1))
    assert (decision["outcome"], decision.get("reason")) == (outcome, reason)
    assert attempted(sum(receiver.attempts.values()), attempts, outcome)
    if fault.retry_after:  # past the in-memory window: the next attempt waits in the store
        assert epoch(decision["until"]) >= started + float(fault.retry_after) - 1e-3  # shown to the microsecond


async def test_transient_then_success_keeps_the_webhook_id(start, receiver, tmp_path) -> None:
    receiver.fault = lambda payload, attempt: Fault(503, retry_after="1") if attempt < 3 else None
    clock = FakeClock(start=time.time())
    config = make_config(tmp_path, receiver.url)
    config.delivery.retry_window = "10s"  # both retries wait in memory
    running = await start(config, clock=clock)
    _, body, _ = await running.post(speaker_job(1))
    done = await running.wait(body["job_id"])
    assert done["decisions"][0]["outcome"] == "sent"
    assert list(receiver.attempts.values()) == [3]  # three attempts, one webhook-id
    assert len(clock.slept) == 2 and min(clock.slept) >= 1


async def test_timeout_is_transient(start, receiver, tmp_path, monkeypatch) -> None:
    config = make_config(tmp_path, receiver.url)
    config.channels["speaker"]["targets"]["home-hub"]["timeout"] = "100ms"
    receiver.fault = lambda payload, attempt: Fault(delay=0.5) if attempt == 1 else None
    running = await start(config)
    _, body, _ = await running.post(speaker_job(1))
    done = await running.wait(body["job_id"])
    assert done["decisions"][0]["outcome"] == "sent"
    assert sum(receiver.attempts.values()) == 2


async def test_redirect_is_never_followed(start, receiver, tmp_path) -> None:
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(f"{receiver.url}/elsewhere")

    app = web.Application()
    app.router.add_post("/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        running = await start(make_config(tmp_path, f"http://127.0.0.1:{port}"))
        _, body, _ = await running.post(speaker_job(1))
        done = await running.wait(body["job_id"])
        assert done["decisions"][0]["reason"] == "redirect_refused"
        assert hits == ["/hooks/home-hub"] and not receiver.received
    finally:
        await runner.cleanup()


async def test_unknown_target_fails_without_a_request(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    job = speaker_job(1)
    job["recipients"][0]["devices"][0]["target"] = "http://169.254.169.254/latest"
    _, body, _ = await running.post(job)
    done = await running.wait(body["job_id"])
    assert (done["decisions"][0]["outcome"], done["decisions"][0]["reason"]) == ("failed", "unknown_target")
    assert not receiver.attempts


async def test_a_410_is_the_gone_device_alone_not_its_hub(start, receiver, tmp_path) -> None:
    """A hub answering 410 for one device: that device is reported dead; the hub's other
    devices are still sent to (each with its own request) and never listed as dead."""
    from gateway.hookspecs import hookimpl

    reported: list[Any] = []

    class Observer:
        @hookimpl
        def tokens_invalidated(self, channel, deliveries):
            reported.extend((channel, d.to.device_id) for d in deliveries)

    receiver.fault = lambda payload, attempt: Fault(410) if payload["device_id"] == "d1" else None
    running = await start(
        make_config(tmp_path, receiver.url, pipeline={"batch_size": 1, "workers": 1}), extra_plugins=(Observer(),)
    )
    _, body, _ = await running.post(speaker_job(3))
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "invalid_token", "sent"]
    assert [d.get("invalid_tokens") for d in done["decisions"]] == [None, ["home-hub/d1"], None]
    assert sum(receiver.attempts.values()) == 3
    assert reported == [("speaker", "d1")]
    _, again, _ = await running.post(speaker_job(3))  # and the next job to the same hub too
    assert [d["outcome"] for d in (await running.wait(again["job_id"]))["decisions"]] == [
        "sent",
        "invalid_token",
        "sent",
    ]
