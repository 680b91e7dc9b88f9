"""End to end on the demo path: POST /v1/jobs -> embedded store -> speaker webhook -> receiver.

Three processes share the machine, as in a deployment: `gateway serve` (the speaker
channel, its store on a temporary file, synchronous=full like the shipped default), the
Standard Webhooks receiver of `gateway.testing` (verifying every signature), and this
driver posting jobs over HTTP. Reports recipients/s accepted (202 = durably stored) and
delivered/s as counted by the receiver.

    .venv/bin/python benchmarks/webhook_e2e.py [--recipients 50000] [--per-job 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from procs import cpu_seconds, rss_kib, spawn, start_gateway  # noqa: E402

from gateway.demo.run import synthetic_jobs  # noqa: E402
from gateway.testing import new_secret  # noqa: E402


async def _follow(proc: asyncio.subprocess.Process, state: dict[str, float]) -> None:
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if line.startswith("received "):
            parts = line.split()
            state["received"], state["duplicates"], state["rejected"] = int(parts[1]), int(parts[3]), int(parts[5])
            state["at"] = float(parts[9])  # time.monotonic() of the latest delivery


async def run(total: int, per_job: int, gateways: int = 1, redis_url: str | None = None) -> dict[str, object]:
    """`gateways` processes (more than one needs `redis_url`: the embedded store is for one
    process); jobs are posted to them in turn."""
    secret, api_key = new_secret(), secrets.token_urlsafe(16)
    env = dict(os.environ, WEBHOOK_SECRET=secret, GATEWAY_DEMO_SPEAKER_SECRET=secret, GATEWAY_DEMO_API_KEY=api_key)
    receiver, receiver_url = await spawn(
        sys.executable, "-m", "gateway.testing.receive", "--count", env=env, ready="webhook receiver on"
    )
    state: dict[str, float] = {"received": 0, "duplicates": 0, "rejected": 0, "at": 0.0}
    follower = asyncio.create_task(_follow(receiver, state))
    prefix = f"bench{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory() as tmp:
        processes = []
        for n in range(gateways):
            store = (
                f'url = "{redis_url}"\nkey_prefix = "{prefix}"\ninstance = "bench-{n}"'
                if redis_url
                else f'url = "sqlite:{tmp}/bench.db"\nsynchronous = "full"'
            )
            processes.append(
                await start_gateway(
                    Path(tmp) / f"bench-{n}.toml",
                    store=store,
                    env=env,
                    api_keys_env="GATEWAY_DEMO_API_KEY",
                    channels=f"""
[channels.speaker.targets.home-hub]
url = "{receiver_url}/hooks/home-hub"
secret = {{ env = "GATEWAY_DEMO_SPEAKER_SECRET" }}""",
                )
            )
        url = processes[0][1]
        rss: list[tuple[int, int]] = []  # (deliveries so far, gateway RSS in KiB, the largest process)

        async def sample() -> None:
            while True:
                rss.append((state["received"], max(rss_kib(p.pid) for p, _ in processes)))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        jobs = synthetic_jobs(total, per_job)
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as http:
                cpu_before = (sum(cpu_seconds(p.pid) for p, _ in processes), cpu_seconds(receiver.pid))
                started = time.monotonic()
                ids = []
                for n, (_, body) in enumerate(jobs):
                    while True:
                        async with http.post(f"{processes[n % gateways][1]}/v1/jobs", data=body) as r:
                            if r.status == 429:
                                await asyncio.sleep(float(r.headers.get("Retry-After", "1")) / 10)
                                continue
                            assert r.status == 202, await r.text()
                            ids.append((await r.json())["job_id"])
                            break
                accepted = time.monotonic() - started
                expected_sent = sum(1 for n in range(total) if n % 40 != 1)  # see synthetic_jobs
                while True:
                    if state["received"] < expected_sent:  # status reads only at the end: they load the gateway
                        await asyncio.sleep(0.05)
                        continue
                    done = 0
                    for job_id in ids:
                        async with http.get(f"{url}/v1/jobs/{job_id}", params={"limit": "1"}) as r:
                            done += (await r.json())["state"] == "completed"
                    if done == len(ids) and state["received"] >= expected_sent:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                gateway_cpu = sum(cpu_seconds(p.pid) for p, _ in processes) - cpu_before[0]
                receiver_cpu = cpu_seconds(receiver.pid) - cpu_before[1]
        finally:
            sampler.cancel()
            for process, _ in processes:
                process.terminate()
            for process, _ in processes:
                await process.wait()
            receiver.terminate()
            await receiver.wait()
            follower.cancel()
    return {
        "gateways": gateways,
        "store": "redis" if redis_url else "embedded",
        "recipients": total,
        "jobs": len(jobs),
        "delivered": state["received"],
        "rejected_by_receiver": state["rejected"],
        "redeliveries": state["duplicates"],
        "accept_seconds": round(accepted, 3),
        "accepted_recipients_per_s": round(total / accepted),
        "end_to_end_seconds": round(elapsed, 3),
        "decided_recipients_per_s": round(total / elapsed),
        "delivered_per_s": round(state["received"] / (state["at"] - started)),
        # CPU of the processes from the first POST to the last receipt, per delivered message
        "gateway_cpu_us_per_message": round(gateway_cpu / max(1, state["received"]) * 1e6, 1),
        "receiver_cpu_us_per_message": round(receiver_cpu / max(1, state["received"]) * 1e6, 1),
        "gateway_peak_rss_mb": round(max(r for _, r in rss) / 1024, 1) if rss else None,
        "gateway_rss_mb_by_progress": _by_progress(rss, state["received"]),
    }


def _by_progress(samples: list[tuple[int, int]], total: int) -> dict[str, float]:
    """RSS when 10%, 25%, 50%, 75% and 100% of deliveries had arrived: flat means bounded."""
    out = {}
    for share in (0.10, 0.25, 0.50, 0.75, 1.0):
        reached = [r for done, r in samples if done >= share * total]
        if reached:
            out[f"{int(share * 100)}%"] = round(reached[0] / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--per-job", type=int, default=1000)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args.recipients, args.per_job))
    except ImportError:
        result = asyncio.run(run(args.recipients, args.per_job))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    result["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
