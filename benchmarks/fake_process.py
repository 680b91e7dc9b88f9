"""One of `gateway.testing`'s fakes in a process of its own, as a provider is in a deployment.

`channels.py` starts one per channel, so the gateway's event loop and the fake's each
have a core (the OS schedules them; the store's writer thread takes what is left).

The child prints `ready <json>` (what the gateway's config needs: ports, keys, the CA
file, web push subscriptions), then `received N at T` whenever its count moves (`T` is
the `time.monotonic()` of the latest receipt: the same clock in every process of the
machine), and on the line `records` on its stdin, `records <json>`: each receipt as
[recipient index, arrival]. The parent times deliveries from those stamps, not from when
it reads the lines.

    python benchmarks/fake_process.py apns --dir /tmp/x [--subscriptions N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KINDS = ("speaker", "email", "fcm", "apns", "webpush")


# -- the child --------------------------------------------------------------------------


def _tls(directory: str) -> tuple[ssl.SSLContext, str]:
    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = f"{directory}/ca-{os.getpid()}.pem"
    ca.cert_pem.write_to_path(ca_file)
    return context, ca_file


async def _start(kind: str, directory: str, subscriptions: int) -> tuple[Any, dict[str, Any], Any]:
    """(the running fake, what the parent needs to know, receipt -> recipient index)"""
    from gateway import testing

    if kind == "speaker":
        secret = testing.new_secret()
        hub = testing.WebhookReceiver(secret)
        url = await hub.start()
        return hub, {"url": url, "secret": secret}, lambda r: int(r.payload["user_id"][1:])
    if kind == "email":
        smtp = testing.SmtpFake()
        await smtp.start()
        return smtp, {"port": smtp.port}, lambda r: int(r.rcpt_tos[0].split("@")[0][4:])
    if kind == "fcm":
        fcm = testing.FcmFake()
        url = await fcm.start()
        return fcm, {"url": url, "service_account": fcm.service_account()}, lambda r: int(r["token"][6:])
    context, ca_file = _tls(directory)
    if kind == "apns":
        apns = testing.ApnsFake(context)
        await apns.start()
        return (
            apns,
            {
                "port": apns.port,
                "key_pem": apns.key_pem(),
                "team_id": apns.team_id,
                "key_id": apns.key_id,
                "topic": apns.topics[0],
                "ca_file": ca_file,
            },
            lambda r: int(r.token, 16),
        )
    if kind == "webpush":
        push = testing.WebPushFake(tls_context=context)
        await push.start()
        subs = [push.subscription() for _ in range(subscriptions)]
        index = {sub["endpoint"].rsplit("/", 1)[1]: i for i, sub in enumerate(subs)}
        return push, {"ca_file": ca_file, "subscriptions": subs}, lambda r: index[r.subscription_id]
    raise SystemExit(f"unknown fake {kind!r}; one of {', '.join(KINDS)}")


def _records(fake: Any) -> list[Any]:
    return list(fake.received.values()) if isinstance(fake.received, dict) else list(fake.received)


async def _serve(kind: str, directory: str, subscriptions: int) -> None:
    fake, info, recipient_of = await _start(kind, directory, subscriptions)
    print("ready " + json.dumps(info), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := (await reader.readline()).decode().strip():
            if line == "records":
                pairs = [[recipient_of(r), at] for r, at in zip(_records(fake), fake.arrivals, strict=True)]
                print("records " + json.dumps(pairs), flush=True)

    listener = asyncio.create_task(commands())
    last = -1
    try:
        while not listener.done():
            await asyncio.sleep(0.01)
            if len(fake.arrivals) != last:
                last = len(fake.arrivals)
                gc.freeze()  # receipts stay for the life of the process: out of the GC's walks
                print(f"received {last} at {fake.arrivals[-1] if last else 0.0:.6f}", flush=True)
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--dir", required=True, help="where to write the CA file")
    parser.add_argument("--subscriptions", type=int, default=0, help="web push subscriptions to create")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args.kind, args.dir, args.subscriptions))
    except ImportError:
        asyncio.run(_serve(args.kind, args.dir, args.subscriptions))


# -- the parent -------------------------------------------------------------------------


class FakeProcess:
    """`async with FakeProcess("apns", tmp) as fake:` then `fake.info`, `fake.count`,
    `fake.at`, `await fake.records()`, `fake.pid`."""

    def __init__(self, kind: str, directory: str, subscriptions: int = 0):
        self.kind, self.directory, self.subscriptions = kind, directory, subscriptions
        self.info: dict[str, Any] = {}
        self.count = 0
        self.at = 0.0
        self._records: asyncio.Future[list[tuple[int, float]]] | None = None

    async def __aenter__(self) -> FakeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            self.kind,
            "--dir",
            self.directory,
            "--subscriptions",
            str(self.subscriptions),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 28,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode()
        if not line.startswith("ready "):
            raise SystemExit(f"the {self.kind} fake did not start: {line!r}")
        self.info = json.loads(line[6:])
        self._follower = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            if line.startswith("received "):
                parts = line.split()
                self.count, self.at = int(parts[1]), float(parts[3])
            elif line.startswith("records ") and self._records is not None:
                self._records.set_result([(int(i), float(at)) for i, at in json.loads(line[8:])])

    async def records(self) -> list[tuple[int, float]]:
        """Every receipt so far as (recipient index, time.monotonic() of its arrival)."""
        assert self.proc.stdin is not None
        self._records = asyncio.get_running_loop().create_future()
        self.proc.stdin.write(b"records\n")
        return await self._records

    async def __aexit__(self, *exc: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.terminate()
        await self.proc.wait()
        self._follower.cancel()


if __name__ == "__main__":
    main()
