"""Side by side with a peer: Apprise and the gateway, same messages, same receivers.

The receivers (a webhook endpoint accepting unsigned requests, since Apprise cannot sign,
and an SMTP server) run in their own process. Apprise runs in this process, the gateway
as deployed (`gateway serve`, a process of its own that this one posts jobs to), one
after the other, delivering the same personalized message to N recipients.
Apprise is given its best shot: one `Apprise` object for the webhook (its connection
reused), messages personalized with `str.format` (no template engine), and both its
sequential `notify` and its concurrent `async_notify`. The gateway signs every webhook
(Standard Webhooks) and renders Liquid templates; jobs of 1,000, embedded store fsynced.

    .venv/bin/python benchmarks/apprise_peer.py [--recipients 2000]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from procs import start_gateway  # noqa: E402

from gateway.testing import new_secret  # noqa: E402

TEXT = "Hi {name}, your order is ready."


class Receivers:
    def __init__(self) -> None:
        self.webhooks = 0
        self.mails = 0
        self.at = 0.0
        self.url = ""
        self.smtp_port = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.testing.receive",
            "--count",
            "--unsigned",
            "--smtp",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        while not (self.url and self.smtp_port):
            line = (await self.proc.stdout.readline()).decode()
            if line.startswith("webhook receiver on"):
                self.url = line.split()[-1]
            elif line.startswith("smtp server on"):
                self.smtp_port = int(line.split(":")[-1])
        self.follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            if line.startswith("received "):
                parts = line.split()
                self.webhooks, self.mails, self.at = int(parts[1]), int(parts[7]), float(parts[9])

    async def wait(self, webhooks: int = 0, mails: int = 0) -> float:
        """Until that many have arrived; the time.monotonic() of the last arrival."""
        while self.webhooks < webhooks or self.mails < mails:
            await asyncio.sleep(0.02)
        return self.at

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()
        self.follower.cancel()


async def apprise_webhook(receivers: Receivers, n: int, concurrent: bool) -> float:
    import apprise

    notifier = apprise.Apprise()
    notifier.add(receivers.url.replace("http://", "json://") + "/hook")
    base = receivers.webhooks
    started = time.monotonic()
    if concurrent:
        for lo in range(0, n, 100):
            await asyncio.gather(
                *(
                    notifier.async_notify(title="Order", body=TEXT.format(name=f"User{i}"))
                    for i in range(lo, min(n, lo + 100))
                )
            )
    else:

        def sequential() -> None:
            for i in range(n):
                notifier.notify(title="Order", body=TEXT.format(name=f"User{i}"))

        # In a thread: this loop must keep reading the receivers' progress, or their pipe
        # fills and blocks them mid-run.
        await asyncio.to_thread(sequential)
    return n / (await receivers.wait(webhooks=base + n) - started)


async def apprise_email(receivers: Receivers, n: int) -> float:
    import apprise

    base = receivers.mails
    started = time.monotonic()

    def sequential() -> None:
        for i in range(n):
            notifier = apprise.Apprise()  # one address per recipient: one URL each
            notifier.add(
                f"mailto://127.0.0.1:{receivers.smtp_port}?from=bench@shop.example&to=user{i}@example.com"
                f"&smtp=127.0.0.1&mode=insecure"
            )
            notifier.notify(title="Order", body=TEXT.format(name=f"User{i}"))

    await asyncio.to_thread(sequential)  # as above: the loop keeps reading the receivers
    return n / (await receivers.wait(mails=base + n) - started)


def _job(n: int, offset: int, channel: str) -> bytes:
    recipients: list[dict[str, Any]] = []
    for i in range(offset, offset + n):
        r: dict[str, Any] = {"user_id": f"u{i}", "attributes": {"name": f"User{i}"}}
        if channel == "email":
            r["email"] = f"user{i}@example.com"
        else:
            r["devices"] = [{"channel": "speaker", "target": "hub", "device_id": f"d{i}"}]
        recipients.append(r)
    content = {
        "speaker": {"speech": "Hi {{ attributes.name }}, your order is ready."},
        "email": {"subject": "Order", "text": "Hi {{ attributes.name }}, your order is ready."},
    }
    return json.dumps(
        {
            "campaign": "peer",
            "category": "transactional",
            "channels": [channel],
            "variants": [{"name": "d", "content": content}],
            "recipients": recipients,
        }
    ).encode()


async def gateway(receivers: Receivers, n: int, channel: str, tmp: str) -> float:
    """`gateway serve` in a process of its own, as deployed (uvloop, the embedded store)."""
    api_key, secret = secrets.token_urlsafe(16), new_secret()
    env = dict(os.environ, PEER_API_KEYS=api_key, PEER_SECRET=secret)
    store = f'url = "sqlite:{tmp}/peer-{channel}.db"'
    process, url = await start_gateway(
        Path(tmp) / f"peer-{channel}.toml",
        store=store,
        api_keys_env="PEER_API_KEYS",
        env=env,
        channels=f"""
[channels.speaker.targets.hub]
url = "{receivers.url}/hook"
secret = {{ env = "PEER_SECRET" }}
[channels.email]
host = "127.0.0.1"
port = {receivers.smtp_port}
security = "none"
from_address = "bench@shop.example"
pool_size = 16""",
    )
    jobs = [_job(min(1000, n - offset), offset, channel) for offset in range(0, n, 1000)]
    base = receivers.webhooks if channel == "speaker" else receivers.mails
    try:
        async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {api_key}"}) as http:
            started = time.monotonic()
            for body in jobs:
                async with http.post("/v1/jobs", data=body) as r:
                    assert r.status == 202, await r.text()
            if channel == "speaker":
                return n / (await receivers.wait(webhooks=base + n) - started)
            return n / (await receivers.wait(mails=base + n) - started)
    finally:
        process.terminate()
        await process.wait()


async def run(n: int, n_email: int | None = None) -> dict[str, Any]:
    """`n` messages per contender on the webhook; `n_email` (default `n`) by email, where
    Apprise's one connection per message makes a long run."""
    n_email = n if n_email is None else n_email
    receivers = Receivers()
    await receivers.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = {
                "recipients": n,
                "webhook": {
                    "apprise_sequential_per_s": round(await apprise_webhook(receivers, n, concurrent=False)),
                    "apprise_async_notify_per_s": round(await apprise_webhook(receivers, n, concurrent=True)),
                    "gateway_per_s": round(await gateway(receivers, n, "speaker", tmp)),
                },
                "email": {
                    "recipients": n_email,
                    "apprise_sequential_per_s": round(await apprise_email(receivers, n_email)),
                    "gateway_per_s": round(await gateway(receivers, n_email, "email", tmp)),
                },
            }
    finally:
        await receivers.stop()
    for kind in ("webhook", "email"):
        best = max(v for k, v in result[kind].items() if k.startswith("apprise"))  # type: ignore[union-attr]
        result[kind]["ratio_vs_best_apprise"] = round(result[kind]["gateway_per_s"] / best, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--email-recipients", type=int, default=None, help="default: --recipients")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.recipients, args.email_recipients)), indent=2))


if __name__ == "__main__":
    main()
