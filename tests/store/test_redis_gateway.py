"""The gateway on the Redis store: caps, deferred delivery, and reads from another gateway."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.clock import FakeClock
from tests.conftest import make_config
from tests.policy.test_policy_pipeline import Provider, Providers, at, push_job, quiet


def redis_config(tmp_path, redis_url: str, prefix: str, **sections):
    return make_config(tmp_path, store={"url": redis_url, "key_prefix": prefix}, **sections)


async def test_racing_jobs_never_exceed_a_cap_on_redis(start, tmp_path, redis_url) -> None:
    Provider.received = []
    config = redis_config(
        tmp_path,
        redis_url,
        f"t{uuid.uuid4().hex[:8]}:",
        pipeline={"workers": 8, "batch_size": 3},
        caps=[{"name": "promo", "tags": ["promo"], "limit": 3, "window": "7d"}],
    )
    running = await start(config, clock=FakeClock(at("2026-11-28T12:00:00Z")), extra_plugins=(Providers(),))
    replies = await asyncio.gather(*(running.post(push_job(["ana", "ben", f"x{n}"])) for n in range(12)))
    for _, body, _ in replies:
        await running.wait(body["job_id"])
    per_user = Provider.per_user()
    assert per_user["ana"] == 3 and per_user["ben"] == 3


async def test_quiet_hours_release_and_a_second_gateway_reads_the_job(start, tmp_path, redis_url) -> None:
    Provider.received = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    a = await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    b = await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    _, body, _ = await a.post(push_job(["ana", "ben"]))
    waiting = await b.wait(body["job_id"], states=("waiting",))  # read through the other gateway
    assert {d["outcome"] for d in waiting["decisions"]} == {"deferred"}
    clock.t = at("2026-11-29T07:00:00Z")
    handled = await asyncio.gather(a.gateway.scheduler.run_due(), b.gateway.scheduler.run_due())
    assert sum(handled) == 2  # released once, by whichever gateway claimed it
    done = await a.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"]
    assert sorted(d.user_id for d in Provider.received) == ["ana", "ben"]
    # Each keeps its deferral, as the other gateway recorded it.
    assert [[e["reason"] for e in d["history"]] for d in done["decisions"]] == [["quiet_hours"]] * 2
    assert [d["history"][0]["until"] for d in done["decisions"]] == [d["until"] for d in waiting["decisions"]]


async def test_idempotency_key_shared_between_gateways(start, tmp_path, redis_url) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = await start(redis_config(tmp_path, redis_url, prefix), extra_plugins=(Providers(),))
    b = await start(redis_config(tmp_path, redis_url, prefix), extra_plugins=(Providers(),))
    job = push_job(["ana"], category="transactional")
    first = await a.post(job, headers={"Idempotency-Key": "k"})
    again = await b.post(job, headers={"Idempotency-Key": "k"})
    assert first[0] == again[0] == 202 and first[1]["job_id"] == again[1]["job_id"]
    assert (await b.post(dict(job, campaign="other"), headers={"Idempotency-Key": "k"}))[0] == 409


async def test_redis_down_then_back(start, tmp_path, redis_url) -> None:
    """Redis unreachable: 503 with Retry-After (never a 202 for a job not stored) and
    /readyz fails; when it is back, the same gateway accepts again and nothing is lost."""
    import shutil
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "redis-data"
    workdir.mkdir()
    command = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(workdir),
    ]

    async def redis_up() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
            await asyncio.sleep(0.02)
        raise AssertionError("redis-server did not start")

    server = await redis_up()
    try:
        running = await start(
            redis_config(tmp_path, f"redis://127.0.0.1:{port}/0", "down:"), extra_plugins=(Providers(),)
        )
        job = push_job(["ana"], category="transactional")
        status, accepted, _ = await running.post(job)
        assert status == 202
        await running.wait(accepted["job_id"])
        server.terminate()
        server.wait()
        status, body, headers = await running.post(job)
        assert status == 503 and body["error"] == "store_unavailable" and headers["Retry-After"]
        async with running.http.get("/readyz") as r:
            assert r.status == 503
        async with running.http.get(f"/v1/jobs/{accepted['job_id']}") as r:
            assert r.status == 503 and r.headers["Retry-After"]  # reads too: retry, not a 500
        server = await redis_up()  # the append-only file brings the data back
        status, again, _ = await running.post(job)
        assert status == 202
        async with running.http.get("/readyz") as r:
            assert r.status == 200
        assert (await running.status(accepted["job_id"]))["state"] == "completed"  # nothing lost
        await running.wait(again["job_id"])
    finally:
        server.terminate()
        server.wait()


@pytest.mark.timeout(90)
async def test_kill_9_of_one_process_another_takes_over(start, tmp_path, redis_url, speaker_secret) -> None:
    """Process A (a real `gateway serve`) is killed mid-job; gateway B, on the same Redis,
    takes the job over from A's last recorded batch once A's heartbeat stops."""
    import signal

    from gateway.testing import WebhookReceiver
    from tests.test_crash import BATCH, assert_each_recipient_once, post, serve, write_config

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    n = 300
    async with WebhookReceiver(speaker_secret, latency=0.01) as receiver:
        config = write_config(
            tmp_path,
            receiver.url,
            name="a.toml",
            store=(f'url = "{redis_url}"\nkey_prefix = "{prefix}"\ninstance = "gw-a"\nheartbeat = "200ms"'),
        )
        a = await serve(config, speaker_secret)
        job_id = await post(
            a.url,
            {
                "campaign": "c",
                "channels": ["speaker"],
                "category": "transactional",
                "variants": [{"name": "d", "content": {"speaker": {"speech": "hi"}}}],
                "recipients": [
                    {
                        "user_id": f"u{i}",
                        "devices": [{"channel": "speaker", "target": "home-hub", "device_id": f"d{i}"}],
                    }
                    for i in range(n)
                ],
            },
        )
        await receiver.wait_for(3 * BATCH, timeout=30)
        a.proc.send_signal(signal.SIGKILL)
        await a.proc.wait()
        assert len(receiver.received) < n, "the job finished before the kill; the test proves nothing"
        b_config = make_config(
            tmp_path,
            receiver.url,
            store={"url": redis_url, "key_prefix": prefix, "instance": "gw-b", "heartbeat": "200ms"},
            pipeline={"workers": 1, "batch_size": BATCH},
        )
        b = await start(b_config)
        done = await b.wait(job_id, timeout=30)
    assert done["counts"]["sent"] == n
    assert_each_recipient_once(receiver, n)
    assert receiver.duplicates <= BATCH  # only the batch in flight at the kill, same webhook-ids


@pytest.mark.timeout(120)
async def test_three_processes_racing_jobs_never_exceed_a_cap(tmp_path, redis_url, speaker_secret) -> None:
    """Three `gateway serve` processes on one Redis, 18 jobs for the same two users posted
    to all three at once: the caps hold, counted from what the receiver got, and every
    other recipient is delivered exactly once, by whichever process took the job."""
    from collections import Counter

    from gateway.testing import WebhookReceiver
    from tests.test_crash import post, serve, wait_completed, write_config

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    caps = (
        '[[caps]]\nname = "promo-week"\ntags = ["promo"]\nlimit = 3\nwindow = "7d"\n'
        '[[caps]]\nname = "speaker-day"\nchannels = ["speaker"]\nlimit = 5\nwindow = "24h"\n'
    )

    def job(n: int) -> dict:
        users = ["ana", "ben", f"solo-{n}"]
        promo = n % 2 == 1
        return {
            "campaign": f"{'promo' if promo else 'news'}-{n}",
            "channels": ["speaker"],
            "tags": ["promo"] if promo else [],
            "variants": [{"name": "d", "content": {"speaker": {"speech": "hi"}}}],
            "recipients": [
                {
                    "user_id": u,
                    "subscriptions": {"speaker": "opted_in"},
                    "devices": [{"channel": "speaker", "target": "home-hub", "device_id": f"{u}-hub"}],
                }
                for u in users
            ],
        }

    async with WebhookReceiver(speaker_secret) as receiver:
        processes = []
        for name in ("a", "b", "c"):
            config = write_config(
                tmp_path,
                receiver.url,
                name=f"{name}.toml",
                workers=4,
                extra=caps,
                store=(f'url = "{redis_url}"\nkey_prefix = "{prefix}"\ninstance = "gw-{name}"\nheartbeat = "500ms"'),
            )
            processes.append(await serve(config, speaker_secret))
        try:
            jobs = await asyncio.gather(*(post(processes[n % 3].url, job(n)) for n in range(18)))
            for n, job_id in enumerate(jobs):
                await wait_completed(processes[(n + 1) % 3].url, job_id)  # read through another process
            import redis

            client = redis.Redis.from_url(redis_url)
            owners = {client.hget(f"{prefix}job:{{{job_id}}}", "owner") for job_id in jobs}
            client.close()
            assert len(owners) >= 2, f"one process took every job: {owners}"
        finally:
            for p in processes:
                p.proc.terminate()
            for p in processes:
                await p.proc.wait()
    per_user = Counter(r.payload["user_id"] for r in receiver.received.values())
    # 9 promo jobs (limit 3 a week) and 9 others; speaker-day (5 a day) counts both.
    assert per_user["ana"] == per_user["ben"] == 5
    promo = Counter(
        r.payload["user_id"] for r in receiver.received.values() if r.payload["campaign"].startswith("promo")
    )
    assert promo["ana"] <= 3 and promo["ben"] <= 3
    assert all(per_user[f"solo-{n}"] == 1 for n in range(18))


async def test_wait_answers_from_whichever_gateway_ran_the_job(start, tmp_path, redis_url) -> None:
    """A shared queue: the job may run in the other process; the waiting one reads its
    decisions from the store. A job whose messages are deferred is decided too (`waiting`)."""
    import json

    Provider.received = []
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    clock = FakeClock(at("2026-11-28T12:00:00Z"))
    a = await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    await start(redis_config(tmp_path, redis_url, prefix, **quiet()), clock=clock, extra_plugins=(Providers(),))
    for n in range(4):
        async with a.http.post("/v1/jobs?wait=10s", data=json.dumps(push_job([f"u{n}"]))) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["state"] == "completed" and [d["outcome"] for d in body["decisions"]] == ["sent"]
    clock.t = at("2026-11-28T22:30:00Z")  # quiet hours in Paris: deferred, and decided
    async with a.http.post("/v1/jobs?wait=10s", data=json.dumps(push_job(["late"]))) as r:
        assert r.status == 200
        body = await r.json()
        assert body["state"] == "waiting"
        assert [(d["outcome"], d["reason"]) for d in body["decisions"]] == [("deferred", "quiet_hours")]
