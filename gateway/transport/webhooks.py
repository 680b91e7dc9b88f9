"""Standard Webhooks signing (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with a `whsec_` secret.

Used by the speaker channel and by the gateway's status callbacks. (The receiver in
`gateway.testing` verifies with code of its own, so each side checks the other.)"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def webhook_key(secret: str) -> bytes:
    """The signing key a `whsec_<base64>` secret holds, or ValueError saying what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"expected a secret starting with {SECRET_PREFIX!r}")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ is not base64") from None


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def webhook_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> tuple[tuple[str, str], ...]:
    return (
        ("content-type", "application/json"),
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", sign_webhook(key, msg_id, timestamp, body)),
    )
