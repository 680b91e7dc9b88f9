"""Web Push (RFC 8030), payloads encrypted with aes128gcm (RFC 8291), VAPID (RFC 8292).

pywebpush's encryption (http_ece: a fresh salt and ephemeral key per message, never
reused across recipients) is called directly (`encrypt_many`). The request is ours:
pywebpush's own sender defaults `ttl` to 0 (the message is dropped when the browser is
offline), has no timeout, mutates the claims it is given and opens a session per send.
Requests go through the gateway's lean HTTP/1.1 client, one pool of kept-alive
connections per push-service origin (aiohttp's client cost more CPU per request than the
encryption). VAPID tokens are signed once per push-service origin and reused until
shortly before they expire.

The endpoint comes from the job (the browser's subscription), so the gateway only calls
hosts in `allowed_hosts` (the major push services by default): a job cannot make it
request an arbitrary URL.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import logging
import multiprocessing
import re
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Literal
from urllib.parse import SplitResult, urlsplit

import http_ece
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from gateway.plugin import (
    Channel,
    ConfigError,
    Delivery,
    Duration,
    Http1Pool,
    InvalidToken,
    PermanentFailure,
    PushContent,
    Result,
    SecretRef,
    Sent,
    TransientFailure,
    hookimpl,
    map_bounded,
    parse_retry_after,
    seconds,
)

log = logging.getLogger(__name__)
# RFC 8291 with one 4096-byte record: 4096 - 16 (tag) - 1 (padding delimiter) - 86 (header).
MAX_PLAINTEXT_BYTES = 3993
VAPID_LIFETIME = 12 * 3600  # RFC 8292 allows up to 24 h; refreshed an hour before it ends
DEFAULT_PUSH_HOSTS = [
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
    "*.push.apple.com",
]


class WebPushConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    vapid_private_key: SecretRef  # PEM, or the raw key in base64url (as web-push tools print it)
    subject: str  # mailto: or https: contact for the push services
    allowed_hosts: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PUSH_HOSTS))
    ca_file: str | None = None  # trust this CA (tests, private push services)
    default_ttl: Duration = "4w"  # when the job has no expires_at
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"  # transactional: high
    concurrency: int = 100
    timeout: Duration = "10s"
    # aes128gcm costs ~120 us of CPU per message. 0 encrypts on the event loop, each message
    # just before its request; N > 0 in N worker processes, a chunk of a batch per task,
    # before the batch's requests. Measured on 2 cores shared with the push service, 0 is
    # faster (benchmarks/README.md); use N when the gateway has idle cores.
    encrypt_workers: int = 0


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encrypt_many(items: list[tuple[str, str, bytes]]) -> list[bytes | str]:
    """Encrypt each (p256dh, auth, plaintext) as aes128gcm; runs in a worker process or
    inline. A bad subscription yields its error name instead of a body.

    This is what pywebpush's `WebPusher(info).encode(data)` does (its encryption is
    http_ece's), without the per-message set-up around it (a deep copy of the
    subscription, the keys decoded and checked twice): ~16 us of the ~140 us."""
    out: list[bytes | str] = []
    for p256dh, auth, data in items:
        try:
            out.append(
                http_ece.encrypt(
                    data,
                    private_key=ec.generate_private_key(ec.SECP256R1()),
                    dh=_unb64(p256dh),
                    auth_secret=_unb64(auth),
                    version="aes128gcm",
                )
            )
        except Exception as exc:  # a malformed p256dh/auth from the browser
            out.append(type(exc).__name__)
    return out


ENCRYPT_CHUNK = 64


def load_vapid(config: WebPushConfig, path: str) -> Vapid02:
    raw = config.vapid_private_key.resolve(f"{path}.vapid_private_key").reveal()
    try:
        if "BEGIN" in raw:
            vapid = Vapid02.from_pem(raw.encode())
        else:
            # py_vapid takes almost any string as *some* scalar: a raw P-256 key is 32 bytes.
            if len(base64.urlsafe_b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4))) != 32:
                raise ValueError("a raw key is 32 bytes in base64url")
            vapid = Vapid02.from_raw(raw.strip().encode())
        vapid.sign({"aud": "https://example.com", "sub": "mailto:check@example.com"})
        return vapid
    except Exception as exc:  # py_vapid raises several types for a bad key
        raise ConfigError([f"{path}.vapid_private_key: not a P-256 private key ({type(exc).__name__})"]) from None


def classify(status: int, retry_after: float | None) -> Result:
    if status in (200, 201, 202):
        return Sent()
    if status in (404, 410):
        return InvalidToken("subscription_gone")
    if status == 413:
        return PermanentFailure("payload_too_large")
    if status == 429 or status >= 500:
        return TransientFailure(f"http_{status}", retry_after)
    if status in (400, 401, 403):
        log.error("webpush: HTTP %d: check the VAPID key and subject", status)
    return PermanentFailure(f"http_{status}")


class WebPushChannel(Channel):
    name = "webpush"
    content_kind = "push"
    subscription_group = "push"
    Config = WebPushConfig
    max_payload_bytes = MAX_PLAINTEXT_BYTES

    def __init__(self, config: WebPushConfig, vapid: Vapid02, tls: ssl.SSLContext):
        super().__init__(config)
        self.vapid = vapid
        self.tls = tls
        self.connections: dict[str, Http1Pool] = {}  # push-service origin -> its connections
        # The allow-list as one pattern, built once: fnmatch per pattern per message cost ~5 us.
        self._allowed_hosts = re.compile("|".join(fnmatch.translate(p) for p in config.allowed_hosts) or "(?!)")
        # forkserver: forking a process that runs threads (the store's writer) can deadlock.
        self.encryptors = (
            None
            if not config.encrypt_workers
            else ProcessPoolExecutor(config.encrypt_workers, mp_context=multiprocessing.get_context("forkserver"))
        )
        self.timeout = seconds(config.timeout)
        self._tokens: dict[str, tuple[str, float]] = {}  # origin -> (Authorization, expires)
        self.signatures = 0

    @classmethod
    def check_config(cls, config: WebPushConfig, path: str) -> list[str]:
        problems = []
        try:
            load_vapid(config, path)
        except ConfigError as exc:
            problems += exc.problems
        if not config.subject.startswith(("mailto:", "https:")):
            problems.append(f"{path}.subject: expected a mailto: or https: URI")
        return problems

    @classmethod
    async def create(cls, config: WebPushConfig) -> WebPushChannel:
        context = ssl.create_default_context(cafile=config.ca_file)
        return cls(config, load_vapid(config, "channels.webpush"), context)

    def allowed(self, url: SplitResult) -> bool:
        return url.scheme == "https" and self._allowed_hosts.match(url.hostname or "") is not None

    def payload(self, content: PushContent) -> bytes:
        fields = {
            "title": content.title,
            "body": content.body,
            "icon": content.image,
            "url": content.deep_link,
            "tag": content.collapse_key,
            "data": content.data,
        }
        return msgspec.json.encode({k: v for k, v in fields.items() if v is not None})

    def payload_size(self, content: PushContent) -> int:
        return len(self.payload(content))

    def authorization(self, origin: str) -> str:
        cached = self._tokens.get(origin)
        now = time.time()
        if cached is not None and cached[1] - 3600 > now:
            return cached[0]
        expires = int(now) + VAPID_LIFETIME
        # A fresh dict each time: signing must not see a previous origin's claims.
        header = self.vapid.sign({"aud": origin, "exp": expires, "sub": self.config.subject})["Authorization"]
        self._tokens[origin] = (header, expires)
        self.signatures += 1
        return header

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        urls = [urlsplit(d.to.subscription.endpoint) for d in deliveries]  # type: ignore[union-attr]
        if self.encryptors is None:
            # Each message is encrypted by the worker about to send it, so the push service
            # answers earlier requests while later ones are encrypted. Encrypting the whole
            # batch first left it idle meanwhile: ~2,700 msg/s against ~4,100 (benchmarks).
            bodies: list[bytes | str | None] = [None] * len(deliveries)
        else:
            bodies = await self._encrypt_in_workers(deliveries, urls)
        return await map_bounded(list(zip(deliveries, bodies, urls, strict=True)), self._send, self.config.concurrency)

    async def _encrypt_in_workers(
        self, deliveries: Sequence[Delivery], urls: list[SplitResult]
    ) -> list[bytes | str | None]:
        """Encrypted bodies (None for endpoints that are not allowed), per message."""
        assert self.encryptors is not None
        items, where = [], []
        for n, (delivery, url) in enumerate(zip(deliveries, urls, strict=True)):
            if self.allowed(url):
                items.append(self._plaintext(delivery))
                where.append(n)
        loop = asyncio.get_running_loop()
        chunks = [items[i : i + ENCRYPT_CHUNK] for i in range(0, len(items), ENCRYPT_CHUNK)]
        encrypted = [
            b
            for part in await asyncio.gather(
                *(loop.run_in_executor(self.encryptors, encrypt_many, chunk) for chunk in chunks)
            )
            for b in part
        ]
        bodies: list[bytes | str | None] = [None] * len(deliveries)
        for n, body in zip(where, encrypted, strict=True):
            bodies[n] = body
        return bodies

    def _plaintext(self, delivery: Delivery) -> tuple[str, str, bytes]:
        keys = delivery.to.subscription.keys  # type: ignore[union-attr]
        return keys.p256dh, keys.auth, self.payload(delivery.content)

    async def _send(self, item: tuple[Delivery, bytes | str | None, SplitResult]) -> Result:
        delivery, body, url = item
        if not self.allowed(url):
            return PermanentFailure(
                "endpoint_not_allowed", f"{url.hostname} is not in [channels.webpush] allowed_hosts"
            )
        if body is None:
            body = encrypt_many([self._plaintext(delivery)])[0]
        if isinstance(body, str):  # a malformed p256dh/auth from the browser: that subscription is unusable
            return InvalidToken(f"bad_subscription_keys: {body}")
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl(delivery)),
            "Urgency": "high" if delivery.category == "transactional" else self.config.urgency,
            "Authorization": self.authorization(f"https://{url.netloc}"),
        }
        topic = _topic(delivery.content.collapse_key)
        if topic:
            headers["Topic"] = topic
        pool = self.connections.get(url.netloc)
        if pool is None:
            pool = self.connections[url.netloc] = Http1Pool(
                f"https://{url.netloc}", ssl=self.tls, max_idle=self.config.concurrency
            )
        try:
            response = await pool.post(
                url.path + (f"?{url.query}" if url.query else ""), headers.items(), body, timeout=self.timeout
            )
        except TimeoutError:
            return TransientFailure("timeout")
        except (OSError, ValueError) as exc:  # refused, reset, TLS, a cut response; a line break in the URL
            return TransientFailure(f"connection_error: {type(exc).__name__}")
        if response.status in (200, 201, 202):  # no redirects are followed: a 3xx is not delivery
            return Sent(response.headers.get("location"))
        return classify(response.status, parse_retry_after(response.headers.get("retry-after"), time.time()))

    def _ttl(self, delivery: Delivery) -> int:
        if delivery.expires_at is not None:
            return max(0, int(delivery.expires_at.timestamp() - time.time()))
        return int(seconds(self.config.default_ttl))

    async def aclose(self) -> None:
        pools, self.connections = self.connections, {}
        for pool in pools.values():
            await pool.aclose()
        if self.encryptors is not None:
            self.encryptors.shutdown(wait=False, cancel_futures=True)


def _topic(collapse_key: str | None) -> str | None:
    """RFC 8030 Topic: at most 32 characters of the URL-safe base64 alphabet."""
    if not collapse_key:
        return None
    cleaned = "".join(c for c in collapse_key if c.isalnum() or c in "-_")[:32]
    return cleaned or None


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [WebPushChannel]
