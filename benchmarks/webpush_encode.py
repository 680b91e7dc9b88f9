"""Web push encryption: pywebpush's public API against http_ece called directly (what the
web push channel does, `plugins/webpush.py: encrypt_many`), CPU per message, same run.

    .venv/bin/python benchmarks/webpush_encode.py [--messages 2000]

The dependency rule (issue 18): pywebpush's public API if it costs at most 10% more CPU
per message; otherwise the channel keeps calling http_ece and py_vapid, and pyproject.toml
names those instead of pywebpush.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def subscription() -> dict[str, Any]:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return {"endpoint": "https://push.example.net/p/1", "keys": {"p256dh": b64(public), "auth": b64(os.urandom(16))}}


def run(messages: int) -> dict[str, Any]:
    from pywebpush import WebPusher

    from plugins.webpush import encrypt_many

    sub = subscription()
    data = json.dumps({"title": "Your cart is waiting", "body": "x" * 120}).encode()
    rounds = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(messages):
            WebPusher(sub).encode(data, "aes128gcm")
        library = time.process_time() - started
        started = time.process_time()
        encrypt_many([(sub["keys"]["p256dh"], sub["keys"]["auth"], data)] * messages)
        direct = time.process_time() - started
        rounds.append((library, direct))
    library, direct = min(r[0] for r in rounds), min(r[1] for r in rounds)
    return {
        "messages": messages,
        "pywebpush_us_per_message": round(library / messages * 1e6, 1),
        "http_ece_direct_us_per_message": round(direct / messages * 1e6, 1),
        "pywebpush_extra_cpu_percent": round((library / direct - 1) * 100, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    print(json.dumps(run(parser.parse_args().messages), indent=2))
