"""After `kill -9`, only deliveries whose answer was not recorded go again, on every channel.

A real `gateway serve` sends a job to one of the five fakes. The fake answers the first
`ANSWERED` requests and holds every later one (in flight, never answered: for all the
gateway knows, delivered). Once the gateway has recorded those answers (in its answers
log, or as decisions in its database), it is killed with SIGKILL and
started again with the fake answering: the requests beyond one per recipient must be at
most the requests that were in flight at the kill, and every recipient is reached.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import msgspec
import pytest

from gateway.store.ackfile import read as read_answers
from gateway.testing.fleet import CHANNELS, FakeFleet
from tests.test_crash import post, serve, wait_completed
from tests.waiting import until

N = 120
ANSWERED = 50
_decisions = msgspec.msgpack.Decoder(list[dict])


def config(tmp_path: Path, fleet: FakeFleet, channel: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[server]
port = 0
api_keys_env = "GATEWAY_TEST_API_KEYS"
shutdown_timeout = "2s"
[store]
url = "sqlite:{tmp_path}/gateway.db"
[quiet_hours]
enabled = false
[pipeline]
batch_size = 20
[delivery]
concurrency = 16
"""
        + fleet.channels_toml((channel,), timeout="30s")
    )
    return path


def recorded(db: Path, job_id: str, channel: str) -> int:
    """Deliveries whose answer the gateway has on disk: acknowledged, or decided sent."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        answers = read_answers(Path(f"{db}.acks")).get(job_id, {})
        ids = {delivery_id for by_id in answers.values() for delivery_id in by_id}
        for (blob,) in conn.execute(
            "SELECT decisions FROM decision_rows WHERE job_id = ? AND channel = ?", (job_id, channel)
        ):
            ids |= {f"{job_id}.{d['recipient']}.{channel}.0" for d in _decisions.decode(blob) if d["outcome"] == "sent"}
        return len(ids)
    finally:
        conn.close()


async def stable(count, quiet: float = 0.05) -> int:
    """`count()` once it has not changed for `quiet` seconds (its source has stopped)."""
    loop = asyncio.get_running_loop()
    last, since = count(), loop.time()
    while loop.time() - since < quiet:
        await asyncio.sleep(0.005)
        now = count()
        if now != last:
            last, since = now, loop.time()
    return last


@pytest.mark.timeout(120)
@pytest.mark.parametrize("channel", CHANNELS)
async def test_kill_9_sends_again_only_what_was_in_flight(tmp_path, channel) -> None:
    fleet = FakeFleet(tmp_path / "fakes")
    await fleet.start()
    received = [0]

    def answer(name: str, key: str, attempt: int):
        received[0] += 1
        return fleet.hold(name) if received[0] > ANSWERED else None

    fleet.answer = answer
    try:
        path = config(tmp_path, fleet, channel)
        first = await serve(path, fleet.secret)
        job = fleet.job([channel], [fleet.recipient(channel, i) for i in range(N)])
        job_id = await post(first.url, job)
        await until(lambda: fleet.answered(channel) >= ANSWERED and fleet.in_flight(channel) > 0, timeout=60)
        await until(lambda: recorded(tmp_path / "gateway.db", job_id, channel) >= ANSWERED, timeout=30)
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        # Requests the dead process had already written still reach the fake (and are
        # held): count them once the count has stopped moving.
        in_flight = await stable(lambda: fleet.in_flight(channel))

        fleet.answer = None
        second = await serve(path, fleet.secret)
        try:
            await wait_completed(second.url, job_id, timeout=60)
        finally:
            second.proc.send_signal(signal.SIGTERM)
            await second.proc.wait()
        assert len(fleet.copies(channel)) == N, "a recipient was never reached"
        again = fleet.requests(channel) - N
        assert again <= in_flight, f"{again} requests sent again; {in_flight} were in flight at the kill"
    finally:
        await asyncio.wait_for(fleet.stop(), 30)
