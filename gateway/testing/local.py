"""`gateway fakes`: the local providers of `gateway.testing`, and a config pointing at them.

Starts an APNs server (HTTP/2 + TLS, token auth), an FCM service (OAuth + HTTP v1), an SMTP
server and a Standard Webhooks receiver, and writes `<dir>/gateway.toml` with a channel
table for each (the keys and CA in `<dir>`, read through `{ file = ... }`), so that
`GATEWAY_CONFIG=<dir>/gateway.toml gateway serve` delivers the example jobs for real.
Web push is left out: the examples' subscriptions name browser push services, which only
the browsers' keys can decrypt for (`gateway demo` swaps in local subscriptions).

By default it runs in the background (the command returns once the providers listen and the
config is written; `--stop` stops them); `--foreground` keeps it in the terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import trustme

from gateway.testing.apns import ApnsFake
from gateway.testing.fcm import FcmFake
from gateway.testing.smtp import SmtpFake
from gateway.testing.webhook import WebhookReceiver, new_secret

DEFAULT_DIR = Path("data/fakes")


class LocalProviders:
    def __init__(self, directory: Path, gateway_url: str):
        self.dir = directory
        self.gateway_url = gateway_url
        self.receiver = WebhookReceiver(new_secret())
        self.smtp = SmtpFake()
        self.fcm = FcmFake()
        self.ca = trustme.CA()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(tls)
        self.apns = ApnsFake(tls)

    async def start(self) -> None:
        for fake in (self.receiver, self.smtp, self.fcm, self.apns):
            await fake.start()

    async def stop(self) -> None:
        for fake in (self.receiver, self.smtp, self.fcm, self.apns):
            await fake.stop()

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        secrets = {
            "speaker-secret": self.receiver.secret or "",
            "unsubscribe-secret": new_secret(),
            "apns-key.p8": self.apns.key_pem(),
            "fcm-service-account.json": json.dumps(self.fcm.service_account()),
        }
        for name, value in secrets.items():
            path = self.dir / name
            path.write_text(value)
            path.chmod(0o600)
        self.ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
        config = self.dir / "gateway.toml"
        config.write_text(self._toml())
        return config

    def _toml(self) -> str:
        d = self.dir.resolve()
        port = self.gateway_url.rsplit(":", 1)[1]
        return f"""# Written by `gateway fakes`: the channels point at its local providers.
[server]
port = {port}

[store]
url = "sqlite:{d}/gateway.db"

[channels.speaker.targets.home-hub]
url = "{self.receiver.url}/hooks/home-hub"
secret = {{ file = "{d}/speaker-secret" }}

[channels.email]
host = "{self.smtp.host}"
port = {self.smtp.port}
security = "none"
from_address = "news@shop.example"
from_name = "Shop"
[channels.email.unsubscribe]
url = "{self.gateway_url}"
secret = {{ file = "{d}/unsubscribe-secret" }}

[channels.fcm]
service_account = {{ file = "{d}/fcm-service-account.json" }}
endpoint = "{self.fcm.url}"

[channels.apns]
endpoint = "127.0.0.1:{self.apns.port}"
ca_file = "{d}/ca.pem"
[channels.apns.apps.shop]
team_id = "{self.apns.team_id}"
key_id = "{self.apns.key_id}"
key = {{ file = "{d}/apns-key.p8" }}
topic = "com.shop.app"
"""

    def counts(self) -> dict[str, int]:
        return {
            "apns": len(self.apns.received),
            "fcm": len(self.fcm.received),
            "email": len(self.smtp.received),
            "speaker": len(self.receiver.received),
        }


async def run(directory: Path, gateway_url: str) -> None:
    """Start, write the config, say so, then print what arrives until stopped."""
    providers = LocalProviders(directory, gateway_url)
    await providers.start()
    config = providers.write_config()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    (directory / "fakes.pid").write_text(str(os.getpid()))
    print(f"local providers ready; config: {config}", flush=True)
    last: dict[str, int] = {}
    try:
        while not stop.is_set():
            counts = providers.counts()
            if counts != last:
                print("received: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
                last = counts
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
    finally:
        await providers.stop()
        (directory / "fakes.pid").unlink(missing_ok=True)


def start_in_background(directory: Path, gateway_url: str, timeout: float = 30.0) -> int:
    """Run `gateway fakes --foreground` detached (output in <dir>/fakes.log); return once
    it is ready, or fail with what it printed."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "fakes.log"
    (directory / "fakes.pid").unlink(missing_ok=True)
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway", "fakes", "--foreground", "--dir", str(directory), "--url", gateway_url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if "local providers ready" in log.read_text():
            return child.pid
        if child.poll() is not None:
            break
        time.sleep(0.05)
    child.kill()
    raise RuntimeError(f"the local providers did not start:\n{log.read_text()}")


def stop_background(directory: Path) -> bool:
    pid_file = directory / "fakes.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    return True
