"""End to end per channel, from POST /v1/jobs to the fake provider's receipt: messages/s,
CPU per message, and p50/p99 latency (each message from the POST of its own job).

For each channel: the gateway (embedded store, synchronous=full) serves on a free port,
the channel's fake from `gateway.testing` runs in the *same process* (so the two share one
core for the event loop; the store's writer thread uses the other), and the driver posts
transactional jobs of 1,000 recipients over HTTP and waits for every receipt. The figures
are therefore a floor for a deployment where the provider is elsewhere.

    .venv/bin/python benchmarks/channels.py [--recipients 5000] [--only apns,fcm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import GatewayConfig  # noqa: E402
from gateway.server import start_server  # noqa: E402
from gateway.testing import ApnsFake, FcmFake, SmtpFake, WebhookReceiver, WebPushFake, new_secret  # noqa: E402

API_KEY = "bench-key"


def _job(n: int, offset: int, channel: str, device: Any) -> bytes:
    recipients = []
    for i in range(offset, offset + n):
        recipient: dict[str, Any] = {"user_id": f"u{i}", "attributes": {"first_name": f"User{i}"}}
        if channel == "email":
            recipient["email"] = f"user{i}@example.com"
        else:
            recipient["devices"] = [device(i)]
        recipients.append(recipient)
    content = {"push": {"title": "Hi {{ attributes.first_name }}", "body": "Your order is ready"},
               "email": {"subject": "Hi {{ attributes.first_name }}", "text": "Your order is ready."},
               "speaker": {"speech": "Your order is ready, {{ attributes.first_name }}."}}
    return json.dumps({"campaign": "bench", "category": "transactional", "channels": [channel],
                       "variants": [{"name": "d", "content": content}], "recipients": recipients}).encode()


async def _measure(config: GatewayConfig, channel: str, total: int, device: Any, fake: Any,
                   recipient_of: Any) -> dict[str, Any]:
    """`recipient_of(record)`: the recipient index a fake's receipt is for, so each
    message's latency is taken from the POST of its own job."""
    server = await start_server(config)
    jobs = [_job(min(1000, total - offset), offset, channel, device) for offset in range(0, total, 1000)]
    posted_at: list[float] = []
    try:
        async with aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            started = time.perf_counter()
            cpu = time.process_time()
            for body in jobs:
                posted_at.append(time.monotonic())
                async with http.post("/v1/jobs", data=body) as r:
                    assert r.status == 202, await r.text()
            while len(fake.received) < total:
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
    finally:
        await server.stop()
    records = list(fake.received.values()) if isinstance(fake.received, dict) else list(fake.received)
    latencies = sorted(arrived - posted_at[recipient_of(record) // 1000]
                       for record, arrived in zip(records, fake.arrivals, strict=True))
    return {"channel": channel, "messages": total, "seconds": round(elapsed, 3),
            "messages_per_s": round(total / elapsed), "cpu_us_per_message": round(cpu / total * 1e6, 1),
            "latency_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1),
            "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)}


def _config(tmp: str, channels: dict[str, Any]) -> GatewayConfig:
    import msgspec

    return msgspec.convert({
        "server": {"port": 0, "api_keys_env": "BENCH_API_KEYS"},
        "store": {"url": f"sqlite:{tmp}/bench-{time.time_ns()}.db", "synchronous": "full"},
        "quiet_hours": {"enabled": False},
        "channels": channels,
    }, GatewayConfig)


async def run(total: int, only: set[str] | None) -> list[dict[str, Any]]:
    import trustme
    from py_vapid import Vapid02

    os.environ["BENCH_API_KEYS"] = API_KEY
    results = []
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = f"{tmp}/ca.pem"
        ca.cert_pem.write_to_path(ca_file)

        def wanted(name: str) -> bool:
            return only is None or name in only

        if wanted("speaker"):
            secret = new_secret()
            os.environ["BENCH_SPEAKER_SECRET"] = secret
            async with WebhookReceiver(secret) as hub:
                config = _config(tmp, {"speaker": {"targets": {"hub": {
                    "url": f"{hub.url}/hook", "secret": {"env": "BENCH_SPEAKER_SECRET"}}}}})
                results.append(await _measure(config, "speaker", total, lambda i: {
                    "channel": "speaker", "target": "hub", "device_id": f"d{i}"}, hub,
                    lambda r: int(r.payload["user_id"][1:])))
        if wanted("email"):
            async with SmtpFake() as smtp:
                config = _config(tmp, {"email": {"host": "127.0.0.1", "port": smtp.port, "security": "none",
                                                 "from_address": "bench@shop.example", "pool_size": 16}})
                results.append(await _measure(config, "email", total, None, smtp,
                                              lambda r: int(r.rcpt_tos[0].split("@")[0][4:])))
        if wanted("fcm"):
            async with FcmFake() as fcm:
                Path(f"{tmp}/sa.json").write_text(json.dumps(fcm.service_account()))
                config = _config(tmp, {"fcm": {"service_account": {"file": f"{tmp}/sa.json"}, "endpoint": fcm.url}})
                results.append(await _measure(config, "fcm", total, lambda i: {
                    "channel": "fcm", "token": f"token-{i:06d}"}, fcm, lambda r: int(r["token"][6:])))
        if wanted("apns"):
            async with ApnsFake(server_tls) as apns:
                os.environ["BENCH_APNS_KEY"] = apns.key_pem()
                config = _config(tmp, {"apns": {"apps": {"shop": {
                    "team_id": apns.team_id, "key_id": apns.key_id, "key": {"env": "BENCH_APNS_KEY"},
                    "topic": "com.shop.app"}}, "endpoint": f"127.0.0.1:{apns.port}", "ca_file": ca_file}})
                results.append(await _measure(config, "apns", total, lambda i: {
                    "channel": "apns", "token": f"{i:064x}"}, apns, lambda r: int(r.token, 16)))
        for workers in (0, 2):  # encryption on the event loop, then in 2 worker processes
            if not wanted("webpush"):
                break
            async with WebPushFake(tls_context=server_tls) as push:
                vapid = Vapid02()
                vapid.generate_keys()
                os.environ["BENCH_VAPID"] = vapid.private_pem().decode()
                subscriptions = [push.subscription() for _ in range(total)]
                index = {sub["endpoint"].rsplit("/", 1)[1]: i for i, sub in enumerate(subscriptions)}
                config = _config(tmp, {"webpush": {"vapid_private_key": {"env": "BENCH_VAPID"},
                                                   "subject": "mailto:ops@shop.example", "encrypt_workers": workers,
                                                   "allowed_hosts": ["127.0.0.1"], "ca_file": ca_file}})
                result = await _measure(config, "webpush", total, lambda i, subs=subscriptions: {
                    "channel": "webpush", "subscription": subs[i]}, push,
                    lambda r, index=index: index[r.subscription_id])
                result["encrypt_workers"] = workers
                results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--only", help="comma-separated channels")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    try:
        import uvloop

        results = uvloop.run(run(args.recipients, only))
    except ImportError:
        results = asyncio.run(run(args.recipients, only))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
