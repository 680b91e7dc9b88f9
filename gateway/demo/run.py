"""`gateway demo`: the gateway, local receivers and the example jobs, end to end.

Starts the local providers of `gateway.testing` (APNs over HTTP/2 + TLS, an FCM service, a
web push service, an SMTP server and a Standard Webhooks receiver), serves the
gateway on a free port
with `config/demo.toml` and a fresh embedded store, posts the example jobs over HTTP
exactly as upstream would, waits for them, and prints every decision and what the
receiver got. A synthetic job then measures throughput on the same path.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import trustme
from py_vapid import Vapid02

from gateway.config import load_config
from gateway.server import start_server
from gateway.testing import WebhookReceiver, example_jobs, new_secret
from gateway.testing.apns import ApnsFake
from gateway.testing.fcm import FcmFake
from gateway.testing.smtp import SmtpFake
from gateway.testing.webpush import WebPushFake

RECEIVER_HOST = "http://demo-receiver"
SMTP_HOST = "demo-smtp"
FCM_HOST = "http://demo-fcm"
SETTLED = ("completed", "waiting")  # waiting: deferred messages (quiet hours...) are scheduled


def synthetic_jobs(total: int, per_job: int = 1000) -> list[tuple[str, bytes]]:
    """Order-ready announcements (transactional: quiet hours do not hold them) to `total`
    recipients in jobs of `per_job`; some have no device, some an unknown time zone."""
    jobs = []
    for start in range(0, total, per_job):
        recipients = []
        for n in range(start, min(start + per_job, total)):
            recipient: dict[str, Any] = {
                "user_id": f"load-{n}",
                "timezone": "Not/AZone" if n % 50 == 0 else "Europe/Paris",
                "attributes": {"first_name": f"User{n}"},
                "subscriptions": {"speaker": "opted_in"},
                "devices": []
                if n % 40 == 1
                else [{"channel": "speaker", "target": "home-hub", "device_id": f"room-{n % 7}"}],
            }
            recipients.append(recipient)
        job = {
            "campaign": "demo-load",
            "category": "transactional",
            "channels": ["speaker"],
            "variants": [
                {
                    "name": "default",
                    "content": {
                        "speaker": {
                            "speech": "Good evening {{ attributes.first_name | default: 'there' }}, "
                            "your order is ready."
                        }
                    },
                }
            ],
            "recipients": recipients,
        }
        jobs.append((f"load-{start // per_job}", json.dumps(job).encode()))
    return jobs


class Progress:
    def __init__(self, total: int):
        self.total = total
        self.tty = sys.stdout.isatty()

    def show(self, done: int, label: str) -> None:
        width = 30
        filled = int(width * done / self.total) if self.total else width
        line = f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} recipients decided  {label}"
        if self.tty:
            print("\r" + line, end="", flush=True)

    def end(self) -> None:
        if self.tty:
            print()


async def demo(config_path: str, synthetic: int) -> int:
    os.environ.setdefault("GATEWAY_DEMO_SPEAKER_SECRET", new_secret())
    os.environ.setdefault("GATEWAY_DEMO_UNSUBSCRIBE_SECRET", secrets.token_urlsafe(24))
    api_key = os.environ.setdefault("GATEWAY_DEMO_API_KEY", secrets.token_urlsafe(24))
    config = load_config(config_path)
    receiver = WebhookReceiver(os.environ["GATEWAY_DEMO_SPEAKER_SECRET"])
    await receiver.start()
    smtp = SmtpFake()
    await smtp.start()
    fcm = FcmFake()
    await fcm.start()
    os.environ["GATEWAY_DEMO_FCM_SERVICE_ACCOUNT"] = json.dumps(fcm.service_account())
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    apns = ApnsFake(server_tls, team_id="TEAM123456", key_id="KEY1234567")
    await apns.start()
    os.environ["GATEWAY_DEMO_APNS_KEY"] = apns.key_pem()
    push = WebPushFake(tls_context=server_tls)
    await push.start()
    vapid = Vapid02()
    vapid.generate_keys()
    os.environ["GATEWAY_DEMO_VAPID_KEY"] = vapid.private_pem().decode()
    for target in config.channels.get("speaker", {}).get("targets", {}).values():
        target["url"] = target["url"].replace(RECEIVER_HOST, receiver.url)
    email = config.channels.get("email")
    if email is not None and email.get("host") == SMTP_HOST:
        email.update(host=smtp.host, port=smtp.port)
    fcm_table = config.channels.get("fcm")
    if fcm_table is not None and fcm_table.get("endpoint") == FCM_HOST:
        fcm_table["endpoint"] = fcm.url
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        ca.cert_pem.write_to_path(f"{tmp}/ca.pem")
        if config.channels.get("apns", {}).get("endpoint") == "demo-apns":
            config.channels["apns"].update(endpoint=f"127.0.0.1:{apns.port}", ca_file=f"{tmp}/ca.pem")
        if config.channels.get("webpush", {}).get("allowed_hosts") == ["demo-push"]:
            config.channels["webpush"].update(
                allowed_hosts=[push.origin.removeprefix("https://")],
                allow_private_networks=True,
                ca_file=f"{tmp}/ca.pem",
            )
        config.store.url = f"sqlite:{tmp}/demo.db"
        server = await start_server(config)
        if email is not None and "unsubscribe" in email:
            server.gateway.channels["email"].config.unsubscribe.url = server.url
        try:
            return await _run(server.url, api_key, Fakes(receiver, smtp, fcm, apns, push), synthetic)
        finally:
            await server.stop()
            for fake in (receiver, smtp, fcm, apns, push):
                await fake.stop()


@dataclass
class Fakes:
    receiver: WebhookReceiver
    smtp: SmtpFake
    fcm: FcmFake
    apns: ApnsFake
    push: WebPushFake


async def _run(base: str, api_key: str, fakes: Fakes, synthetic: int) -> int:
    receiver = fakes.receiver
    headers = {"Authorization": f"Bearer {api_key}"}
    print(f"gateway on {base}; webhook receiver on {receiver.url}\n")
    ok = True
    async with aiohttp.ClientSession(base, headers=headers) as http:
        examples = [(name, _local_push(body, fakes.push)) for name, body in example_jobs()]
        print(f"Posting {len(examples)} example jobs: {', '.join(n for n, _ in examples)}")
        print(
            "  (their web push subscriptions are swapped for the local push service's: decrypting needs the\n"
            "   subscriber's private key, which the examples' browser keys do not come with)"
        )
        posted = [(name, await _post(http, body)) for name, body in examples]
        for name, reply in posted:
            for warning in reply.get("warnings", []):
                print(f"  {name}: warning: {warning}")
        statuses = await _wait(http, [r["job_id"] for _, r in posted])
        print()
        for (name, _), status in zip(posted, statuses, strict=True):
            ok &= _print_job(name, status)
        _print_receiver(receiver)
        _print_smtp(fakes.smtp)
        _print_fcm(fakes.fcm)
        _print_apns(fakes.apns)
        _print_push(fakes.push)
        if synthetic:
            ok &= await _throughput(http, receiver, synthetic)
    if receiver.rejected:
        print(f"receiver rejected {len(receiver.rejected)} request(s): {receiver.rejected[:3]}")
        ok = False
    print("\ndemo: OK" if ok else "\ndemo: FAILED")
    return 0 if ok else 1


async def _post(http: aiohttp.ClientSession, body: bytes) -> dict[str, Any]:
    async with http.post("/v1/jobs", data=body, headers={"Content-Type": "application/json"}) as r:
        reply = await r.json()
        if r.status != 202:
            raise SystemExit(f"POST /v1/jobs answered {r.status}: {reply}")
        return reply


async def _wait(http: aiohttp.ClientSession, job_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    """Poll until every job has been through the pipeline (`completed`, or `waiting` for
    deferred messages); return their full status with all decisions. Only unsettled jobs
    are polled, every 100 ms, so the poll does not compete with delivery for the CPU."""
    import asyncio

    deadline = time.monotonic() + timeout
    latest: dict[str, dict[str, Any]] = {}
    progress: Progress | None = None
    while True:
        for job_id in job_ids:
            if latest.get(job_id, {}).get("state") not in SETTLED:
                async with http.get(f"/v1/jobs/{job_id}", params={"limit": "1"}) as r:
                    latest[job_id] = await r.json()
        states = list(latest.values())
        progress = progress or Progress(sum(s["recipients"] for s in states))
        completed = sum(s["state"] in SETTLED for s in states)
        progress.show(sum(s["recipients_done"] for s in states), f"{completed}/{len(states)} jobs through")
        if completed == len(states):
            progress.end()
            break
        if time.monotonic() > deadline:
            progress.end()
            raise SystemExit(f"jobs not completed after {timeout:.0f}s")
        await asyncio.sleep(0.1)
    return [await _all_decisions(http, job_id) for job_id in job_ids]


async def _all_decisions(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    offset: int | None = 0
    status: dict[str, Any] = {}
    decisions: list[dict[str, Any]] = []
    while offset is not None:
        async with http.get(f"/v1/jobs/{job_id}", params={"offset": str(offset), "limit": "1000"}) as r:
            status = await r.json()
        decisions += status["decisions"]
        offset = status["next_offset"]
    status["decisions"] = decisions
    return status


def _print_job(name: str, status: dict[str, Any]) -> bool:
    counts = ", ".join(f"{k} {v}" for k, v in status["counts"].items() if v)
    print(f"{name}  (job {status['job_id'][:8]}, {status['state']}: {counts})")
    rows = [("recipient", "channel", "decision", "reason / detail", "variant")]
    for d in status["decisions"]:
        until = f"until {d['until'][:16].replace('T', ' ')} UTC" if d.get("until") else None
        why = " - ".join(x for x in (d.get("reason"), d.get("detail"), until, *d.get("flags", ())) if x)
        rows.append((d["user_id"], d["channel"], d["outcome"], why, d.get("variant", "")))
    _table(rows)
    expected = status["recipients"] * len({d["channel"] for d in status["decisions"]} or {1})
    return status["state"] in SETTLED and len(status["decisions"]) == expected


def _print_receiver(receiver: WebhookReceiver) -> None:
    print(f"webhook receiver got {len(receiver.received)} signed request(s), all signatures verified:")
    rows = [("path", "device", "user", "speech")]
    for item in list(receiver.received.values())[:10]:
        p = item.payload
        rows.append((item.path, p["device_id"], p["user_id"], p["speech"]))
    _table(rows)


def _local_push(body: bytes, push: WebPushFake) -> bytes:
    job = json.loads(body)
    for recipient in job["recipients"]:
        for device in recipient.get("devices", []):
            if device.get("channel") == "webpush":
                device["subscription"] = push.subscription()
    return json.dumps(job).encode()


def _print_apns(apns: ApnsFake) -> None:
    print(f"APNs (HTTP/2, TLS) got {len(apns.received)} notification(s), provider tokens verified:")
    rows = [("device token", "topic", "title", "body")]
    for note in apns.received[:10]:
        alert = note.payload.get("aps", {}).get("alert", {})
        rows.append(
            (
                note.token[:16] + "\u2026",
                note.headers.get("apns-topic", ""),
                alert.get("title", ""),
                alert.get("body", "")[:50],
            )
        )
    _table(rows)


def _print_push(push: WebPushFake) -> None:
    print(f"Web push service got {len(push.received)} message(s), decrypted and VAPID-verified:")
    rows = [("subscription", "title", "body", "url")]
    for item in push.received[:10]:
        rows.append(
            (
                item.subscription_id[:12],
                item.payload.get("title", ""),
                item.payload.get("body", "")[:50],
                item.payload.get("url", ""),
            )
        )
    _table(rows)


def _print_fcm(fcm: FcmFake) -> None:
    print(
        f"FCM got {len(fcm.received)} message(s) ({len(fcm.issued)} OAuth token(s) issued, "
        f"{len(fcm.rejected_assertions)} assertion(s) rejected):"
    )
    rows = [("token", "title", "body", "data")]
    for message in fcm.received[:10]:
        note = message.get("notification", {})
        rows.append(
            (
                message["token"][:16] + "…",
                note.get("title", ""),
                note.get("body", "")[:50],
                ", ".join(f"{k}={v}" for k, v in message.get("data", {}).items()),
            )
        )
    _table(rows)


def _print_smtp(smtp: SmtpFake) -> None:
    print(f"SMTP server got {len(smtp.received)} message(s):")
    rows = [("to", "subject", "parts", "one-click unsubscribe")]
    for mail in smtp.received[:10]:
        msg = mail.message
        parts = "text+html" if msg.is_multipart() else "text"
        rows.append(
            (
                ", ".join(mail.rcpt_tos),
                str(msg["Subject"]),
                parts,
                "yes" if msg["List-Unsubscribe-Post"] else "no (transactional)",
            )
        )
    _table(rows)


async def _throughput(http: aiohttp.ClientSession, receiver: WebhookReceiver, total: int) -> bool:
    jobs = synthetic_jobs(total)
    before = len(receiver.received)
    print(f"Throughput: {total} recipients in {len(jobs)} jobs to the local webhook receiver")
    started = time.perf_counter()
    replies = [await _post(http, body) for _, body in jobs]
    accepted = time.perf_counter() - started
    statuses = await _wait(http, [r["job_id"] for r in replies])
    elapsed = time.perf_counter() - started
    delivered = len(receiver.received) - before
    sent = sum(s["counts"]["sent"] for s in statuses)
    print(
        f"  accepted {total} recipients in {accepted:.2f}s ({total / accepted:,.0f} recipients/s, "
        f"durably stored before each 202)"
    )
    print(
        f"  decided all in {elapsed:.2f}s: {total / elapsed:,.0f} recipients/s end to end; "
        f"{delivered} delivered and verified ({delivered / elapsed:,.0f}/s), "
        f"{total - sent} not sent (no device)"
    )
    return sent == delivered


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()
