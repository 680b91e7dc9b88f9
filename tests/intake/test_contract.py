"""The canonical jobs of the shared brief are accepted exactly as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import LimitsConfig
from gateway.intake.validate import accept_job
from gateway.testing.examples import example_jobs
from tests.conftest import SHARED_EXAMPLES, make_config, require_shared, speaker_job


def shared_examples() -> list[Path]:
    found = sorted(SHARED_EXAMPLES.glob("*.json"))
    if not found:
        if require_shared():
            pytest.fail(f"GATEWAY_REQUIRE_SHARED is set but {SHARED_EXAMPLES} has no examples")
        pytest.skip(f"no shared examples beside the checkout ({SHARED_EXAMPLES})")
    return found


def test_shared_examples_decode_as_they_are() -> None:
    for path in shared_examples():
        accepted = accept_job(path.read_bytes(), LimitsConfig(), {})
        assert accepted.job.recipients, path.name
        assert accepted.variants[-1].when is None


def test_demo_posts_the_shared_examples_unchanged() -> None:
    shared = {p.name: p.read_bytes() for p in shared_examples()}
    assert dict(example_jobs()) == shared


async def test_shared_examples_accepted_over_http(start, receiver, tmp_path) -> None:
    running = await start(make_config(tmp_path, receiver.url))
    for path in shared_examples():
        status, body, _ = await running.post(path.read_bytes())
        assert status == 202, body
        assert body["recipients"] > 0
        done = await running.wait(body["job_id"])
        channels = len(json.loads(path.read_bytes())["channels"])
        # every recipient ends with one decision per channel of its job
        assert len(done["decisions"]) == body["recipients"] * channels
        assert all(d["reason"] for d in done["decisions"] if d["outcome"] != "sent")


async def test_unavailable_channel_is_a_warning_not_a_rejection(start) -> None:
    running = await start()
    job = speaker_job(2, channels=["sms", "speaker"])
    status, body, _ = await running.post(job)
    assert status == 202
    assert any("'sms'" in w for w in body["warnings"])
    done = await running.wait(body["job_id"])
    sms = [d for d in done["decisions"] if d["channel"] == "sms"]
    assert [(d["outcome"], d["reason"]) for d in sms] == [("suppressed", "channel_unavailable")] * 2
