"""End to end per channel, from POST /v1/jobs to the fake provider's receipt: messages/s,
CPU per message (the gateway's and the fake's), and p50/p99 latency (each message from
the POST of its own job); then all five channels at once ("mixed").

The gateway (embedded store, synchronous=full) serves on a free port in this process,
whose driver only posts transactional jobs of 1,000 recipients over HTTP. Each channel's
fake from `gateway.testing` runs in a process of its own (`fake_process.py`), as a
provider is elsewhere in a deployment. How the 2 cores are shared: the OS schedules the
gateway's event loop, its store's writer thread and the fake's event loop on them; in
the mixed run five fakes share them with the gateway.

    .venv/bin/python benchmarks/channels.py [--recipients 5000] [--only apns,fcm] [--no-mixed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fake_process import KINDS, FakeProcess  # noqa: E402
from procs import cpu_seconds  # noqa: E402

from gateway.cli import tune_gc  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.server import start_server  # noqa: E402

API_KEY = "bench-key"
PER_JOB = 1000


def _device(kind: str, info: dict[str, Any], i: int) -> dict[str, Any]:
    if kind == "speaker":
        return {"channel": "speaker", "target": "hub", "device_id": f"d{i}"}
    if kind == "fcm":
        return {"channel": "fcm", "token": f"token-{i:06d}"}
    if kind == "apns":
        return {"channel": "apns", "token": f"{i:064x}"}
    return {"channel": "webpush", "subscription": info["subscriptions"][i]}


def _job(kinds: list[str], fakes: dict[str, FakeProcess], n: int, offset: int) -> bytes:
    recipients = []
    for i in range(offset, offset + n):
        recipient: dict[str, Any] = {
            "user_id": f"u{i}",
            "attributes": {"first_name": f"User{i}"},
            "devices": [_device(k, fakes[k].info, i) for k in kinds if k != "email"],
        }
        if "email" in kinds:
            recipient["email"] = f"user{i}@example.com"
        recipients.append(recipient)
    content = {
        "push": {"title": "Hi {{ attributes.first_name }}", "body": "Your order is ready"},
        "email": {"subject": "Hi {{ attributes.first_name }}", "text": "Your order is ready."},
        "speaker": {"speech": "Your order is ready, {{ attributes.first_name }}."},
    }
    return json.dumps(
        {
            "campaign": "bench",
            "category": "transactional",
            "channels": kinds,
            "variants": [{"name": "d", "content": content}],
            "recipients": recipients,
        }
    ).encode()


# The library-backed transport each channel can select (gateway/transport/seam.py).
LIBRARY = {"speaker": "aiohttp", "fcm": "aiohttp", "webpush": "aiohttp", "apns": "aioapns"}


def _config(tmp: str, fakes: dict[str, FakeProcess], encrypt_workers: int, library: bool = False) -> GatewayConfig:
    import msgspec

    channels: dict[str, Any] = {}
    for kind, fake in fakes.items():
        info = fake.info
        if kind == "speaker":
            os.environ["BENCH_SPEAKER_SECRET"] = info["secret"]
            channels["speaker"] = {
                "targets": {"hub": {"url": f"{info['url']}/hook", "secret": {"env": "BENCH_SPEAKER_SECRET"}}}
            }
        elif kind == "email":
            channels["email"] = {
                "host": "127.0.0.1",
                "port": info["port"],
                "security": "none",
                "from_address": "bench@shop.example",
                "pool_size": 16,
            }
        elif kind == "fcm":
            Path(f"{tmp}/sa.json").write_text(json.dumps(info["service_account"]))
            channels["fcm"] = {"service_account": {"file": f"{tmp}/sa.json"}, "endpoint": info["url"]}
        elif kind == "apns":
            os.environ["BENCH_APNS_KEY"] = info["key_pem"]
            channels["apns"] = {
                "apps": {
                    "shop": {
                        "team_id": info["team_id"],
                        "key_id": info["key_id"],
                        "key": {"env": "BENCH_APNS_KEY"},
                        "topic": info["topic"],
                    }
                },
                "endpoint": f"127.0.0.1:{info['port']}",
                "ca_file": info["ca_file"],
            }
        elif kind == "webpush":
            from py_vapid import Vapid02

            vapid = Vapid02()
            vapid.generate_keys()
            os.environ["BENCH_VAPID"] = vapid.private_pem().decode()
            channels["webpush"] = {
                "vapid_private_key": {"env": "BENCH_VAPID"},
                "subject": "mailto:ops@shop.example",
                "encrypt_workers": encrypt_workers,
                "allowed_hosts": ["127.0.0.1:*"],
                "allow_private_networks": True,
                "ca_file": info["ca_file"],
            }
    if library:
        for kind in channels:
            if kind in LIBRARY:
                channels[kind]["transport"] = LIBRARY[kind]
    return msgspec.convert(
        {
            "server": {"port": 0, "api_keys_env": "BENCH_API_KEYS"},
            "store": {"url": f"sqlite:{tmp}/bench-{time.time_ns()}.db", "synchronous": "full"},
            "quiet_hours": {"enabled": False},
            "channels": channels,
        },
        GatewayConfig,
    )


def _percentile_ms(values: list[float], share: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * share))] * 1000, 1)


async def measure(
    tmp: str, kinds: list[str], total: int, encrypt_workers: int = 0, library: bool = False
) -> dict[str, Any]:
    """`total` recipients, each reached on every channel in `kinds`."""
    os.environ["BENCH_API_KEYS"] = API_KEY
    async with contextlib.AsyncExitStack() as stack:
        fakes = {
            kind: await stack.enter_async_context(
                FakeProcess(kind, tmp, subscriptions=total if kind == "webpush" else 0)
            )
            for kind in kinds
        }
        server = await start_server(_config(tmp, fakes, encrypt_workers, library))
        jobs = [_job(kinds, fakes, min(PER_JOB, total - offset), offset) for offset in range(0, total, PER_JOB)]
        posted_at: list[float] = []
        try:
            async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
                cpu = time.process_time(), {k: cpu_seconds(f.pid) for k, f in fakes.items()}
                started = time.monotonic()
                for body in jobs:
                    posted_at.append(time.monotonic())
                    async with http.post("/v1/jobs", data=body) as r:
                        assert r.status == 202, await r.text()
                while any(f.count < total for f in fakes.values()):
                    await asyncio.sleep(0.02)
                elapsed = max(f.at for f in fakes.values()) - started
                gateway_cpu = time.process_time() - cpu[0]
                fake_cpu = {k: cpu_seconds(f.pid) - cpu[1][k] for k, f in fakes.items()}
        finally:
            await server.stop()
        records = {kind: await fake.records() for kind, fake in fakes.items()}
    messages = total * len(kinds)
    result: dict[str, Any] = {
        "channel": (kinds[0] if len(kinds) == 1 else "mixed") + (f" ({LIBRARY[kinds[0]]})" if library else ""),
        "messages": messages,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(messages / elapsed),
        "gateway_cpu_us_per_message": round(gateway_cpu / messages * 1e6, 1),
        "fake_cpu_us_per_message": round(sum(fake_cpu.values()) / messages * 1e6, 1),
    }
    every = sorted(at - posted_at[i // PER_JOB] for pairs in records.values() for i, at in pairs)
    result["latency_ms_p50"], result["latency_ms_p99"] = _percentile_ms(every, 0.5), _percentile_ms(every, 0.99)
    if len(kinds) > 1:
        result["per_channel"] = {}
        for kind, pairs in records.items():
            latencies = sorted(at - posted_at[i // PER_JOB] for i, at in pairs)
            result["per_channel"][kind] = {
                "delivered_per_s": round(len(pairs) / (max(at for _, at in pairs) - started)),
                "fake_cpu_us_per_message": round(fake_cpu[kind] / total * 1e6, 1),
                "latency_ms_p50": _percentile_ms(latencies, 0.5),
                "latency_ms_p99": _percentile_ms(latencies, 0.99),
            }
    if "webpush" in kinds:
        result["encrypt_workers"] = encrypt_workers
    return result


async def run(total: int, only: set[str] | None, mixed: bool = True) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            if only is None or kind in only:
                results.append(await measure(tmp, [kind], total))
        if only is None or "webpush" in only:  # encryption in 2 worker processes instead of the event loop
            results.append(await measure(tmp, ["webpush"], total, encrypt_workers=2))
        for kind in ("speaker", "apns"):  # the library-backed transports, beside ours
            if only is None or kind in only:
                results.append(await measure(tmp, [kind], total, library=True))
        kinds = [k for k in KINDS if only is None or k in only]
        if mixed and len(kinds) > 1:
            results.append(await measure(tmp, kinds, total // len(kinds)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--only", help="comma-separated channels")
    parser.add_argument("--no-mixed", action="store_true", help="skip the run with every channel at once")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    tune_gc()  # as `gateway serve` runs (run.py does the same for every benchmark)
    try:
        import uvloop

        results = uvloop.run(run(args.recipients, only, not args.no_mixed))
    except ImportError:
        results = asyncio.run(run(args.recipients, only, not args.no_mixed))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
