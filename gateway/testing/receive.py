"""`python -m gateway.testing.receive`: a Standard Webhooks receiver (and optionally an SMTP
server) in its own process, for people and for benchmarks.

By default each webhook received is printed (its id, path and payload) once its signature
is verified; `--count` prints running counts instead, which a driving process follows.
(Its own module: `python -m gateway.testing.webhook` would import the module twice, once
through the package, and runpy warns about that.)
"""

from __future__ import annotations

import asyncio
import gc
import json
import os

from gateway.testing.webhook import WebhookReceiver


async def _serve(secret: str | None, host: str, port: int, smtp: bool = False, count: bool = False) -> None:
    receiver = WebhookReceiver(secret)
    url = await receiver.start(host, port)
    print(f"webhook receiver on {url}", flush=True)
    mail = None
    if smtp:
        from gateway.testing.smtp import SmtpFake

        mail = SmtpFake()
        await mail.start()
        print(f"smtp server on {mail.host}:{mail.port}", flush=True)
    last = -1
    shown = 0
    while True:
        await asyncio.sleep(0.05)
        if not count:
            for item in list(receiver.received.values())[shown:]:
                print(f"{item.webhook_id} {item.path} {json.dumps(item.payload, ensure_ascii=False)}", flush=True)
            shown = len(receiver.received)
            continue
        # What was received stays for the life of the process: out of the cyclic GC's walks
        # (a million kept receipts made each collection, and the receiver, slower by 3x).
        gc.freeze()
        total = len(receiver.received) + (len(mail.received) if mail else 0)
        if total != last:
            last = total
            # `at`: time.monotonic() of the latest first receipt (the clock is the same in
            # every process of the machine), so a driver times the last delivery exactly
            latest = max([*receiver.arrivals[-1:], *(mail.arrivals[-1:] if mail else [])], default=0.0)
            print(
                f"received {len(receiver.received)} duplicates {receiver.duplicates} "
                f"rejected {len(receiver.rejected)} mails {len(mail.received) if mail else 0} "
                f"at {latest:.6f}",
                flush=True,
            )


def main() -> None:
    """`python -m gateway.testing.receive --secret whsec_... [--port N] [--count]`"""
    import argparse

    parser = argparse.ArgumentParser(description="Standard Webhooks receiver that verifies signatures")
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"))
    parser.add_argument("--unsigned", action="store_true", help="accept requests without signatures")
    parser.add_argument("--smtp", action="store_true", help="also run a local SMTP server")
    parser.add_argument("--count", action="store_true", help="print running counts, not each webhook")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not args.secret and not args.unsigned:
        parser.error("--secret (or $WEBHOOK_SECRET) is required unless --unsigned")
    serve = _serve(None if args.unsigned else args.secret, args.host, args.port, args.smtp, args.count)
    try:
        import uvloop

        uvloop.run(serve)
    except ImportError:
        asyncio.run(serve)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
