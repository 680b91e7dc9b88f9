"""What happens over time, under faults: the figures of the time-and-faults issue.

    .venv/bin/python benchmarks/faults.py [--only kill9,disk,outage,hanging,slow] [--quick]

- kill9: per channel, a real `gateway serve` is killed with SIGKILL twice mid-job and
  started again; duplicates (copies of a delivery beyond the first, counted at the fake
  provider) against the requests in flight at each kill: received by the provider and not
  answered yet (`in_flight`), and sent by the gateway without an answer on its disk
  (`unrecorded`: in flight, plus answers that arrived in the last moments). A kill can
  come before the process started after the previous one has sent again what that one
  left unrecorded: the bound is on the sum, duplicates <= sum of `unrecorded`.
- disk: the embedded store's database cannot grow (SQLite max_page_count, what a full disk
  gives it) for 10 s while a job runs: requests the provider received beyond one per
  delivery, and whether the job completes once the disk has room.
- outage: the SMTP relay is stopped for 20 s under a transactional job of 5 recipients (fewer
  than open the breaker): how many fail, and whether every one is delivered once it is back.
- hanging: FCM never answers (its timeout 2 s) while the speaker webhook is healthy, in
  the same jobs: the speaker's deliveries per second against a run without FCM.
- slow: a provider answering after 1 s, 1,000 recipients in batches of 50, the speaker's
  concurrency 128: how long the job takes (the floor is 1,000 / 128 ~ 8 s).

Fakes run in this process; the gateway in its own (kill9) or in this event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import procs  # noqa: E402

from gateway.testing.fleet import FakeFleet  # noqa: E402

API_KEY = "bench-key"
LATENCY = 0.02  # every fake answers after this: requests are in flight when the gateway dies


# -- fakes ------------------------------------------------------------------------------------
def make_fakes(tmp: Path) -> FakeFleet:
    os.environ["B_KEYS"] = API_KEY
    return FakeFleet(tmp / "fakes", latency=LATENCY)


def job(fakes: FakeFleet, channels: list[str], recipients: list[dict[str, Any]]) -> dict[str, Any]:
    return fakes.job(channels, recipients, campaign="faults")


def on(fakes: FakeFleet, channel: str, start: int, n: int) -> list[dict[str, Any]]:
    return [fakes.recipient(channel, i) for i in range(start, start + n)]


async def post(url: str, body: dict[str, Any]) -> str:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.post(f"{url}/v1/jobs", json=body) as r:
            reply = await r.json()
            assert r.status == 202, reply
            return str(reply["job_id"])


async def states(url: str, ids: list[str]) -> list[str]:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        out = []
        for job_id in ids:
            async with http.get(f"{url}/v1/jobs/{job_id}", params={"limit": "1"}) as r:
                out.append((await r.json())["state"])
        return out


async def until(condition: Any, timeout: float, step: float = 0.01) -> bool:
    """Poll `condition()` (a value or an awaitable) until it holds; False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(step)
    return False


# -- kill -9 ---------------------------------------------------------------------------------
async def kill9(fakes: FakeFleet, tmp: Path, channel: str, n: int) -> dict[str, Any]:
    config = tmp / f"kill-{channel}.toml"
    db = tmp / f"kill-{channel}.db"
    store = f'url = "sqlite:{db}"'
    env = dict(os.environ)
    channels = fakes.channels_toml((channel,))
    proc, url = await procs.start_gateway(config, store=store, channels=channels, api_keys_env="B_KEYS", env=env)
    ids = [await post(url, job(fakes, [channel], on(fakes, channel, k * n, n))) for k in range(2)]
    total = 2 * n
    attempts = fakes.fakes[channel].attempts  # requests per device / address / webhook-id
    kills = []
    for fraction in (0.3, 0.65):
        await until(lambda f=fraction: fakes.answered(channel) >= total * f, 120, 0.002)
        in_flight = fakes.in_flight(channel)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        unrecorded = set(attempts) - await recorded(fakes, db, ids, channel, n)
        kills.append({"at": round(fakes.answered(channel) / total, 2), "in_flight": in_flight})
        kills[-1]["unrecorded"] = len(unrecorded)
        proc, url = await procs.start_gateway(config, store=store, channels=channels, api_keys_env="B_KEYS", env=env)
    finished = await until(lambda: _all_done(url, ids), 300, 0.1)
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    copies = fakes.copies(channel)
    return {
        "channel": channel,
        "recipients": total,
        "completed": finished,
        "delivered": len(copies),
        "duplicates": sum(v - 1 for v in copies.values()),
        "in_flight_at_kills": [k["in_flight"] for k in kills],
        "unrecorded_at_kills": [k["unrecorded"] for k in kills],
        "killed_at": [k["at"] for k in kills],
    }


async def recorded(fakes: FakeFleet, db: Path, job_ids: list[str], channel: str, n: int) -> set[str]:
    """The requests (as the fake counts them) whose answer the (killed) gateway has on
    disk: acknowledged, or decided. Job k's recipient i is `fakes.key(channel, k * n + i)`;
    the webhook fake counts by webhook-id, the delivery id."""
    from gateway.store.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    await store.open()
    try:
        keys: set[str] = set()
        for k, job_id in enumerate(job_ids):
            acks = await store.acks(job_id)
            decided = {d.recipient for d in await store.decisions(job_id, 0, 10**6) if d.outcome != "deferred"}
            if channel == "speaker":
                keys |= {f"{job_id}.{i}.speaker.0" for i in decided | set(acks)}
            else:
                keys |= {fakes.key(channel, k * n + i) for i in decided | set(acks)}
        return keys
    finally:
        await store.close()


async def _all_done(url: str, ids: list[str]) -> bool:
    return all(s == "completed" for s in await states(url, ids))


# -- in-process scenarios --------------------------------------------------------------------
async def in_process(tmp: Path, fakes: FakeFleet, channels: list[str], name: str, **sections: Any) -> Any:
    import tomllib

    import msgspec

    from gateway.config import GatewayConfig
    from gateway.server import start_server

    data = tomllib.loads(fakes.channels_toml(tuple(channels), sections.pop("timeout", "10s")))
    config = {
        "server": {"port": 0, "api_keys_env": "B_KEYS"},
        "quiet_hours": {"enabled": False},
        "store": {"url": f"sqlite:{tmp}/{name}.db", "synchronous": "normal"},
        **data,
        **sections,
    }
    return await start_server(msgspec.convert(config, GatewayConfig))


async def disk(fakes: FakeFleet, tmp: Path, n: int) -> dict[str, Any]:
    server = await in_process(tmp, fakes, ["fcm"], "disk", pipeline={"batch_size": 200})
    store = server.gateway.store
    before = fakes.requests("fcm")
    job_id = await post(server.url, job(fakes, ["fcm"], on(fakes, "fcm", 0, n)))
    await until(lambda: fakes.answered("fcm") - before >= n * 0.2, 60, 0.002)
    await fill(store)
    full_from = fakes.requests("fcm")
    await asyncio.sleep(10)
    during = fakes.requests("fcm") - full_from
    await store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))  # type: ignore[attr-defined]
    await store._write(lambda c: c.execute("DROP TABLE filler"))  # type: ignore[attr-defined]
    finished = await until(lambda: _all_done(server.url, [job_id]), 120, 0.1)
    await server.stop()
    requests = fakes.requests("fcm") - before
    return {
        "recipients": n,
        "completed": finished,
        "requests_during_10s_full": during,
        "requests_beyond_one_per_delivery": requests - n,
    }


async def fill(store: Any) -> None:
    """A full disk, as SQLite meets it: the database may not grow, and its free pages are
    used up by rows committed one by one until a write fails."""
    await store._write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)"))
    await store._write(lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}"))
    from gateway.store import StoreUnavailable

    try:
        while True:
            await store._write(lambda c: c.execute("INSERT INTO filler VALUES (zeroblob(3000))"))
    except StoreUnavailable:
        pass


async def outage(fakes: FakeFleet, tmp: Path, n: int) -> dict[str, Any]:
    server = await in_process(tmp, fakes, ["email"], "outage", timeout="2s")
    before = fakes.answered("email")
    port = fakes.smtp.port
    await fakes.smtp.stop()
    job_id = await post(server.url, job(fakes, ["email"], on(fakes, "email", 500_000, n)))
    await asyncio.sleep(20)
    fakes.smtp.port = port
    await fakes.smtp.start()
    finished = await until(lambda: _all_done(server.url, [job_id]), 300, 0.2)
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.get(f"{server.url}/v1/jobs/{job_id}", params={"limit": "1"}) as r:
            counts = (await r.json())["counts"]
    await server.stop()
    return {
        "recipients": n,
        "outage_seconds": 20,
        "completed": finished,
        "counts": counts,
        "delivered_after": fakes.answered("email") - before,
    }


async def hanging(fakes: FakeFleet, tmp: Path, n: int) -> dict[str, Any]:
    results = {}
    for run, channels in (("baseline", ["speaker"]), ("fcm_hanging", ["speaker", "fcm"])):
        fakes.down = {"fcm"} if run == "fcm_hanging" else set()
        server = await in_process(tmp, fakes, channels, f"hang-{run}", timeout="2s")
        before = fakes.answered("speaker")
        started = time.monotonic()
        recipients = [
            {
                "user_id": f"h{i}",
                "devices": [
                    {"channel": "speaker", "target": "home-hub", "device_id": f"h{run}{i}"},
                    {"channel": "fcm", "token": f"hang-{run}-{i}"},
                ],
            }
            for i in range(n)
        ]
        await post(server.url, job(fakes, channels, recipients))
        await until(lambda b=before: fakes.answered("speaker") - b >= n, 300, 0.002)
        elapsed = time.monotonic() - started
        results[run] = {"speaker_delivered_per_s": round(n / elapsed), "seconds": round(elapsed, 2)}
        await server.stop()
    fakes.down = set()
    results["ratio"] = round(
        results["fcm_hanging"]["speaker_delivered_per_s"] / results["baseline"]["speaker_delivered_per_s"], 2
    )
    return results


async def slow(fakes: FakeFleet, tmp: Path) -> dict[str, Any]:
    concurrency = 128  # the speaker's own `concurrency` (its default), within delivery.concurrency
    fakes.latency = 1.0
    server = await in_process(tmp, fakes, ["speaker"], "slow", pipeline={"batch_size": 50})
    started = time.monotonic()
    job_id = await post(server.url, job(fakes, ["speaker"], on(fakes, "speaker", 2_000_000, 1000)))
    finished = await until(lambda: _all_done(server.url, [job_id]), 300, 0.05)
    elapsed = time.monotonic() - started
    await server.stop()
    fakes.latency = LATENCY
    return {
        "recipients": 1000,
        "provider_latency_s": 1.0,
        "concurrency": concurrency,
        "completed": finished,
        "seconds": round(elapsed, 1),
        "floor_seconds": round(1000 / concurrency, 1),
    }


async def main(only: set[str], quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gateway-faults-") as name:
        tmp = Path(name)
        out: dict[str, Any] = {}
        for channel in ("speaker", "fcm", "email", "apns", "webpush") if "kill9" in only else ():
            fakes = make_fakes(tmp / channel)  # fresh fakes per channel: counts per run
            await fakes.start()
            out.setdefault("kill9", []).append(await kill9(fakes, tmp, channel, 1000 if quick else 3000))
            print(json.dumps(out["kill9"][-1]), flush=True)
            await fakes.stop()
        fakes = make_fakes(tmp)
        await fakes.start()
        for name, scenario in (
            ("disk", lambda: disk(fakes, tmp, 2000 if quick else 5000)),
            ("outage", lambda: outage(fakes, tmp, 5)),
            ("hanging", lambda: hanging(fakes, tmp, 1000 if quick else 3000)),
            ("slow", lambda: slow(fakes, tmp)),
        ):
            if name in only:
                out[name] = await scenario()
                print(name, json.dumps(out[name]), flush=True)
        await fakes.stop()
        return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="kill9,disk,outage,hanging,slow")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(set(args.only.split(",")), args.quick)), indent=2))
