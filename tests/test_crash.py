"""An accepted job survives `kill -9` and SIGTERM of a real `gateway serve` process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.testing import WebhookReceiver
from tests.conftest import API_KEY, speaker_job

BATCH = 20


def write_config(
    tmp_path: Path,
    receiver_url: str,
    store: str | None = None,
    name: str = "gateway.toml",
    extra: str = "",
    workers: int = 1,
) -> Path:
    """`store`: the [store] table's lines (default: SQLite in tmp_path); `extra`: more
    TOML at the end."""
    path = tmp_path / name
    store = store or f'url = "sqlite:{tmp_path}/gateway.db"'
    path.write_text(f"""
[server]
port = 0
api_keys_env = "GATEWAY_TEST_API_KEYS"
shutdown_timeout = "10s"
[store]
{store}
[quiet_hours]
enabled = false
[pipeline]
workers = {workers}
batch_size = {BATCH}
[channels.speaker]
concurrency = 4
[channels.speaker.targets.home-hub]
url = "{receiver_url}/hooks/home-hub"
secret = {{ env = "GATEWAY_TEST_SPEAKER_SECRET" }}
{extra}
""")
    return path


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, url: str):
        self.proc = proc
        self.url = url


async def serve(config: Path, secret: str) -> Process:
    env = dict(os.environ, GATEWAY_TEST_API_KEYS=API_KEY, GATEWAY_TEST_SPEAKER_SECRET=secret)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("gateway exited before listening")
            if line.startswith("gateway listening on "):
                url = line.split()[-1]
                break
    asyncio.get_running_loop().create_task(_drain(proc))
    return Process(proc, url)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


async def post(url: str, job: dict[str, Any]) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.post(f"{url}/v1/jobs", json=job) as r:
            assert r.status == 202, await r.text()
            return (await r.json())["job_id"]


async def wait_completed(url: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with asyncio.timeout(timeout):
            while True:
                async with http.get(f"{url}/v1/jobs/{job_id}", params={"limit": "1"}) as r:
                    status = await r.json()
                if status["state"] == "completed":
                    return status
                await asyncio.sleep(0.05)


async def restart_until_completed(config: Path, secret: str, job_id: str) -> dict[str, Any]:
    """Start a new `gateway serve` on the same store, wait for the job, stop it cleanly."""
    process = await serve(config, secret)
    try:
        return await wait_completed(process.url, job_id)
    finally:
        process.proc.send_signal(signal.SIGTERM)
        await process.proc.wait()


def assert_each_recipient_once(receiver: WebhookReceiver, n: int) -> None:
    per_user = Counter(r.payload["user_id"] for r in receiver.received.values())
    assert len(per_user) == n, f"{n - len(per_user)} recipients never delivered"
    assert set(per_user.values()) == {1}, "a recipient was delivered under two different ids"


@pytest.mark.timeout(90)
async def test_kill_9_mid_job_then_restart_completes_without_doubles(tmp_path, speaker_secret) -> None:
    n = 300
    async with WebhookReceiver(speaker_secret, latency=0.01) as receiver:
        config = write_config(tmp_path, receiver.url)
        first = await serve(config, speaker_secret)
        job_id = await post(first.url, speaker_job(n))
        await receiver.wait_for(3 * BATCH, timeout=30)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        before_restart = len(receiver.received)
        assert before_restart < n, "the job finished before the kill; the test proves nothing"

        status = await restart_until_completed(config, speaker_secret, job_id)
    assert status["counts"]["sent"] == n
    assert_each_recipient_once(receiver, n)
    # Only the batch in flight at the kill can be sent again, and it carries the same
    # webhook-id, so the receiver absorbs it as a redelivery.
    assert receiver.duplicates <= BATCH


@pytest.mark.timeout(60)
async def test_kill_9_right_after_202_loses_nothing(tmp_path, speaker_secret) -> None:
    async with WebhookReceiver(speaker_secret, latency=0.5) as receiver:
        config = write_config(tmp_path, receiver.url)
        first = await serve(config, speaker_secret)
        job_id = await post(first.url, speaker_job(5))
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        receiver.latency = 0
        status = await restart_until_completed(config, speaker_secret, job_id)
    assert status["counts"]["sent"] == 5
    assert_each_recipient_once(receiver, 5)


@pytest.mark.timeout(60)
async def test_sigterm_finishes_the_batch_under_way_and_resumes_without_redelivery(tmp_path, speaker_secret) -> None:
    n = 200
    async with WebhookReceiver(speaker_secret, latency=0.01) as receiver:
        config = write_config(tmp_path, receiver.url)
        first = await serve(config, speaker_secret)
        job_id = await post(first.url, speaker_job(n))
        await receiver.wait_for(BATCH + 1, timeout=30)
        first.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.proc.wait(), 15) == 0
        assert len(receiver.received) < n

        status = await restart_until_completed(config, speaker_secret, job_id)
    assert status["counts"]["sent"] == n
    assert_each_recipient_once(receiver, n)
    assert receiver.duplicates == 0  # a graceful stop records its batch before exiting
