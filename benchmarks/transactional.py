"""The one-message path: N jobs of one recipient each, C in flight, to `gateway serve`.

The shape of transactional traffic (an order shipped, a login code): every job has one
recipient with one device. `gateway serve` runs in a process of its own (embedded store,
synchronous=full, as shipped), the channel's fake in another (`fake_process.py`), and this
driver posts from a third. Reported per channel: delivered/s, the gateway process's CPU
per message (utime + stime of all its threads, from /proc), and p50/p99 from each job's
POST to the fake's receipt of its message. Beside them, in the same run: the peer, a plain
push gateway (`push_relay.py`: aiohttp and aioapns, nothing stored) given the same APNs
jobs, and the ratio of the two; and the floor, the same POSTs to an aiohttp server that
answers 202 and does nothing else.

    .venv/bin/python benchmarks/transactional.py [--jobs 20000] [--concurrency 128] [--only apns]
    .venv/bin/python benchmarks/transactional.py --rate 1000 --jobs 10000   # paced: latency at a load
    .venv/bin/python benchmarks/transactional.py --only apns --profile /tmp/gw  # cProfile: /tmp/gw.apns
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fake_process import FakeProcess  # noqa: E402
from procs import cpu_seconds, serve_jobs, spawn, start_gateway, thread_cpu_seconds  # noqa: E402

CHANNELS = ("apns", "speaker")


def _channel_toml(kind: str, info: dict[str, Any], env: dict[str, str]) -> str:
    if kind == "apns":
        env["BENCH_APNS_KEY"] = info["key_pem"]
        return f"""
[channels.apns]
endpoint = "127.0.0.1:{info["port"]}"
ca_file = "{info["ca_file"]}"
[channels.apns.apps.shop]
team_id = "{info["team_id"]}"
key_id = "{info["key_id"]}"
key = {{ env = "BENCH_APNS_KEY" }}
topic = "{info["topic"]}"
"""
    env["BENCH_SPEAKER_SECRET"] = info["secret"]
    return f"""
[channels.speaker.targets.hub]
url = "{info["url"]}/hook"
secret = {{ env = "BENCH_SPEAKER_SECRET" }}
"""


def _job(kind: str, n: int) -> bytes:
    """Job `n`: one recipient whose device names `n`, so each receipt finds its POST."""
    device: dict[str, Any] = (
        {"channel": "apns", "token": f"{n:064x}"}
        if kind == "apns"
        else {"channel": "speaker", "target": "hub", "device_id": f"d{n}"}
    )
    content = {
        "push": {
            "title": "Order shipped",
            "body": "Hi {{ attributes.first_name }}, order {{ attributes.order }} is on its way.",
        },
        "speaker": {"speech": "Hi {{ attributes.first_name }}, order {{ attributes.order }} is on its way."},
    }
    return json.dumps(
        {
            "campaign": "order-shipped",
            "category": "transactional",
            "channels": [kind],
            "variants": [{"name": "default", "content": content}],
            "recipients": [
                {"user_id": f"u{n}", "attributes": {"first_name": "Ana", "order": f"A-{n}"}, "devices": [device]}
            ],
        }
    ).encode()


def _percentile_ms(values: list[float], share: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * share))] * 1000, 1) if values else 0.0


async def _post_all(url: str, api_key: str, bodies: list[bytes], concurrency: int, rate: float) -> list[float]:
    """POST every body, `concurrency` at a time (and at most `rate` per second when given);
    a 429 is retried after its Retry-After. Returns each job's first POST time."""
    posted_at = [0.0] * len(bodies)
    next_job = 0
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, headers={"Authorization": f"Bearer {api_key}"}) as http:

        async def worker() -> None:
            nonlocal next_job
            while next_job < len(bodies):
                n, next_job = next_job, next_job + 1
                if rate:
                    await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                posted_at[n] = time.monotonic()
                while True:
                    async with http.post("/v1/jobs", data=bodies[n]) as r:
                        if r.status == 429:
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        assert r.status in (200, 202), await r.text()
                        await r.read()
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return posted_at


async def measure(
    kind: str, jobs: int, concurrency: int, rate: float = 0.0, profile: str | None = None
) -> dict[str, Any]:
    api_key = secrets.token_urlsafe(16)
    env = dict(os.environ, BENCH_API_KEYS=api_key)
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeProcess(kind, tmp) as fake:
            gateway, url = await start_gateway(
                Path(tmp) / "gateway.toml",
                store=f'url = "sqlite:{tmp}/bench.db"\nsynchronous = "full"',
                channels=_channel_toml(kind, fake.info, env),
                api_keys_env="BENCH_API_KEYS",
                env=env,
                profile=profile,
            )
            result = await _drive(gateway, url, api_key, fake, kind, jobs, concurrency, rate)
    return {"channel": kind, "jobs": jobs, "concurrency": concurrency, "rate": rate or None} | result


async def _drive(
    server: asyncio.subprocess.Process,
    url: str,
    api_key: str,
    fake: FakeProcess,
    kind: str,
    jobs: int,
    concurrency: int,
    rate: float,
) -> dict[str, Any]:
    """POST the jobs to the server until the fake has every message; its figures."""
    bodies = [_job(kind, n) for n in range(jobs)]
    try:
        cpu_before = cpu_seconds(server.pid)
        threads_before = thread_cpu_seconds(server.pid)
        started = time.monotonic()
        posted_at = await _post_all(url, api_key, bodies, concurrency, rate)
        while fake.count < jobs:
            await asyncio.sleep(0.02)
        elapsed = fake.at - started
        cpu = cpu_seconds(server.pid) - cpu_before
        threads = thread_cpu_seconds(server.pid)
        loop_cpu = threads.get(server.pid, 0.0) - threads_before.get(server.pid, 0.0)
    finally:
        server.terminate()
        await server.wait()
    records = await fake.records()
    latencies = sorted(at - posted_at[n] for n, at in records)
    return {
        "delivered_per_s": round(jobs / elapsed),
        "gateway_cpu_us_per_message": round(cpu / jobs * 1e6, 1),
        # of which the event loop's thread; the rest is the store's threads (its writer, mostly)
        "loop_thread_cpu_us_per_message": round(loop_cpu / jobs * 1e6, 1),
        "latency_ms_p50": _percentile_ms(latencies, 0.5),
        "latency_ms_p99": _percentile_ms(latencies, 0.99),
    }


async def relay(jobs: int, concurrency: int, rate: float = 0.0) -> dict[str, Any]:
    """The same APNs jobs to a plain push gateway (`push_relay.py`: aiohttp and aioapns,
    nothing stored), against a fake APNs process of its own: the peer in the same run."""
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeProcess("apns", tmp) as fake:
            env = dict(os.environ, BENCH_RELAY=json.dumps(fake.info))
            server, url = await spawn(sys.executable, str(HERE / "push_relay.py"), env=env, ready="relay listening on")
            result = await _drive(server, url, "-", fake, "apns", jobs, concurrency, rate)
    result["relay_cpu_us_per_message"] = result.pop("gateway_cpu_us_per_message")
    del result["loop_thread_cpu_us_per_message"]
    peer = {"channel": "apns, plain push relay (aiohttp + aioapns)", "jobs": jobs, "concurrency": concurrency}
    return peer | {"rate": rate or None} | result


# -- the floor: aiohttp's server answering 202 and doing nothing else ------------------------


async def _serve_floor() -> None:
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"job_id": "0" * 32, "recipients": 1}, status=202)

    await serve_jobs(accept, "floor")


async def floor(jobs: int, concurrency: int) -> dict[str, Any]:
    """The same POSTs to an aiohttp server that only answers 202 (on uvloop, as `gateway
    serve` runs): the CPU a request costs before the gateway does anything with it."""
    server, url = await spawn(
        sys.executable, __file__, "--serve-floor", env=dict(os.environ), ready="floor listening on"
    )
    try:
        before = cpu_seconds(server.pid)
        started = time.monotonic()
        await _post_all(url, "-", [_job("apns", n) for n in range(jobs)], concurrency, 0.0)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        await server.wait()
    return {
        "channel": "none (aiohttp answering 202)",
        "jobs": jobs,
        "requests_per_s": round(jobs / elapsed),
        "server_cpu_us_per_request": round(cpu / jobs * 1e6, 1),
    }


async def run(
    jobs: int,
    concurrency: int,
    only: list[str] | None = None,
    rate: float = 0.0,
    profile: str | None = None,
    no_relay: bool = False,
) -> list[dict[str, Any]]:
    results = []
    for kind in only or CHANNELS:
        result = await measure(kind, jobs, concurrency, rate, f"{profile}.{kind}" if profile else None)
        print(json.dumps(result), flush=True)
        results.append(result)
    if "apns" in (only or CHANNELS) and not no_relay:
        peer = await relay(jobs, concurrency, rate)
        print(json.dumps(peer), flush=True)
        results.append(peer)
        gateway = next(r for r in results if r["channel"] == "apns")["gateway_cpu_us_per_message"]
        share = {"apns_gateway_cpu_over_relay": round(gateway / peer["relay_cpu_us_per_message"], 2)}
        print(json.dumps(share), flush=True)
        results.append(share)
    if not rate:
        result = await floor(jobs, concurrency)
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rate", type=float, default=0.0, help="jobs per second (default: as fast as answered)")
    parser.add_argument("--only", help=f"comma-separated: {', '.join(CHANNELS)}")
    parser.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile: FILE.<channel> (slower)")
    parser.add_argument("--no-relay", action="store_true", help="skip the plain push relay run beside APNs")
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)  # the floor's server process
    args = parser.parse_args()
    if args.serve_floor:
        import uvloop

        uvloop.run(_serve_floor())
        return
    only = args.only.split(",") if args.only else None
    asyncio.run(run(args.jobs, args.concurrency, only, args.rate, args.profile, args.no_relay))


if __name__ == "__main__":
    main()
