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
import hashlib
import ipaddress
import logging
import multiprocessing
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import http_ece
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from gateway.plugin import (
    AddressNotAllowed,
    Channel,
    ConfigError,
    Delivery,
    Device,
    Duration,
    Http1Transport,
    InvalidToken,
    PermanentFailure,
    PushContent,
    Recipient,
    RequestError,
    Result,
    SecretRef,
    Sent,
    Throttled,
    TransientFailure,
    hookimpl,
    http1_transport,
    invalid_request,
    map_bounded,
    parse_retry_after,
    seconds,
)

log = logging.getLogger(__name__)
advice = Throttled(log)  # per failed delivery: at most a line a minute
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
    # "gateway": our HTTP/1.1 client (gateway/transport/http1.py, ~4x less CPU per request);
    # "aiohttp": aiohttp's client
    transport: Literal["gateway", "aiohttp"] = "gateway"
    # Push services reached at once, each with its own kept-alive connections (at most
    # `connections_per_origin`); one unused for `idle_origin` is closed.
    max_origins: int = 64
    connections_per_origin: int = 32
    idle_origin: Duration = "2m"
    # The addresses a push-service name resolves to must be public: loopback, private and
    # link-local ones are refused unless this is true (a private push service, tests).
    allow_private_networks: bool = False
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
        advice.error("webpush: HTTP %d: check the VAPID key and subject", status)
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
        self.connections: OrderedDict[str, Http1Transport] = OrderedDict()  # origin -> its connections, by last use
        self.allow_list = AllowList(config.allowed_hosts)
        self.idle_origin = seconds(config.idle_origin)
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

    def endpoint(self, delivery: Delivery) -> Endpoint:
        """The delivery's push endpoint, parsed and checked against `allowed_hosts`."""
        device = delivery.to
        assert isinstance(device, Device) and device.subscription is not None
        return self.allow_list.check(device.subscription.endpoint)

    def provider(self, delivery: Delivery) -> str:
        """Each push service (origin) is its own provider."""
        try:
            return self.endpoint(delivery).origin
        except ValueError:
            return "invalid"

    def check_recipient(self, recipient: Recipient) -> list[tuple[str, str]]:
        problems = []
        for k, device in enumerate(recipient.devices):
            if device.channel == self.name and device.subscription is not None:
                try:
                    self.allow_list.check(device.subscription.endpoint)
                except ValueError as exc:
                    problems.append((f"devices[{k}].subscription.endpoint", str(exc)))
        return problems

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

    def max_in_flight(self) -> int:
        return self.config.concurrency

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        if self.encryptors is None:
            # Each message is encrypted by the worker about to send it, so the push service
            # answers earlier requests while later ones are encrypted. Encrypting the whole
            # batch first left it idle meanwhile: ~2,700 msg/s against ~4,100 (benchmarks).
            bodies: dict[str, bytes | str] = {}
        else:
            bodies = await self._encrypt_in_workers(deliveries)
        self._close_idle_origins()
        return await map_bounded(deliveries, lambda d: self._send(d, bodies.get(d.id)), self.config.concurrency)

    async def _encrypt_in_workers(self, deliveries: Sequence[Delivery]) -> dict[str, bytes | str]:
        """Encrypted bodies by delivery id (of the deliveries whose endpoint is allowed)."""
        assert self.encryptors is not None
        items, ids = [], []
        for delivery in deliveries:
            try:
                self.endpoint(delivery)
                items.append(self._plaintext(delivery))
            except ValueError:
                continue  # _send says why
            ids.append(delivery.id)
        loop = asyncio.get_running_loop()
        chunks = [items[i : i + ENCRYPT_CHUNK] for i in range(0, len(items), ENCRYPT_CHUNK)]
        parts = await asyncio.gather(*(loop.run_in_executor(self.encryptors, encrypt_many, c) for c in chunks))
        return dict(zip(ids, [body for part in parts for body in part], strict=True))

    def _plaintext(self, delivery: Delivery) -> tuple[str, str, bytes]:
        keys = delivery.to.subscription.keys  # type: ignore[union-attr]
        return keys.p256dh, keys.auth, self.payload(delivery.content)

    async def _send(self, delivery: Delivery, body: bytes | str | None) -> Result:
        """Build the request (what fails here is this delivery's alone), then send it."""
        try:
            endpoint = self.endpoint(delivery)
        except ValueError as exc:
            return PermanentFailure("endpoint_not_allowed", str(exc))
        if body is None:
            body = encrypt_many([self._plaintext(delivery)])[0]
        if isinstance(body, str):  # a malformed p256dh/auth from the browser: that subscription is unusable
            return InvalidToken(f"bad_subscription_keys: {body}")
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl(delivery)),
            "Urgency": "high" if delivery.category == "transactional" else self.config.urgency,
            "Authorization": self.authorization(endpoint.origin),
        }
        topic = topic_for(delivery.content.collapse_key)
        if topic:
            headers["Topic"] = topic
        try:
            response = await self._pool(endpoint).post(endpoint.target, headers.items(), body, timeout=self.timeout)
        except AddressNotAllowed as exc:
            return PermanentFailure("address_not_allowed", str(exc))
        except RequestError as exc:  # our side: a target or header that cannot go on the wire
            return invalid_request(exc)
        except TimeoutError:
            return TransientFailure("timeout")
        except OSError as exc:  # refused, reset, TLS, a cut response
            return TransientFailure(f"connection_error: {type(exc).__name__}")
        if response.status in (200, 201, 202):  # no redirects are followed: a 3xx is not delivery
            return Sent(response.headers.get("location"))
        return classify(response.status, parse_retry_after(response.headers.get("retry-after"), time.time()))

    def _pool(self, endpoint: Endpoint) -> Http1Transport:
        pool = self.connections.get(endpoint.origin)
        if pool is None:
            while len(self.connections) >= self.config.max_origins and self._evict_one():
                pass
            pool = self.connections[endpoint.origin] = http1_transport(
                self.config.transport,
                endpoint.origin,
                ssl=self.tls,
                max_idle=self.config.connections_per_origin,
                max_connections=self.config.connections_per_origin,
                address_allowed=None if self.config.allow_private_networks else is_public_address,
            )
        self.connections.move_to_end(endpoint.origin)
        return pool

    def _evict_one(self) -> bool:
        """Close the least recently used origin with nothing in flight; False if none is."""
        for origin, pool in self.connections.items():
            if not pool.in_flight:
                del self.connections[origin]
                asyncio.get_running_loop().create_task(pool.aclose())
                return True
        return False

    def _close_idle_origins(self) -> None:
        now = asyncio.get_running_loop().time()
        for origin, pool in list(self.connections.items()):
            if not pool.in_flight and now - pool.last_used > self.idle_origin:
                del self.connections[origin]
                asyncio.get_running_loop().create_task(pool.aclose())

    def _ttl(self, delivery: Delivery) -> int:
        if delivery.expires_at is not None:
            return max(0, int(delivery.expires_at.timestamp() - time.time()))
        return int(seconds(self.config.default_ttl))

    async def aclose(self) -> None:
        pools, self.connections = self.connections, OrderedDict()
        for pool in pools.values():
            await pool.aclose()
        if self.encryptors is not None:
            self.encryptors.shutdown(wait=False, cancel_futures=True)


_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


def topic_for(collapse_key: str | None) -> str | None:
    """RFC 8030 Topic: at most 32 characters of the URL-safe base64 alphabet. A collapse
    key that already is one is used as it is; any other (longer, spaces, any script) is
    hashed into one, so two keys that differ still replace different messages."""
    if not collapse_key:
        return None
    if _TOPIC.fullmatch(collapse_key):
        return collapse_key
    digest = hashlib.blake2b(collapse_key.encode(), digest_size=24).digest()
    return base64.urlsafe_b64encode(digest).decode()  # 32 characters, no padding


class Endpoint(NamedTuple):
    origin: str  # https://host[:port], the provider and the pool's key
    target: str  # path and query


class AllowList:
    """`allowed_hosts`: `host`, `*.domain`, either with `:port` or `:*`; without a port,
    443 only. Built once: matching is one regex per host part."""

    def __init__(self, patterns: list[str]):
        self.rules: list[tuple[re.Pattern[str], int | None]] = []
        for pattern in patterns:
            host, port = _split_port(pattern)
            self.rules.append((re.compile(fnmatch.translate(host.lower())), None if port == "*" else int(port or 443)))

    def check(self, url: str) -> Endpoint:
        """The endpoint of `url`, or ValueError saying why it may not be called."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or 443
        except ValueError:
            raise ValueError("not a URL with a valid host and port") from None
        if parts.scheme != "https" or not host:
            raise ValueError("expected an https:// push service URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a push service URL carries no user name or password")
        if not any(rule.match(host) and allowed in (None, port) for rule, allowed in self.rules):
            raise ValueError(f"{host}:{port} is not in [channels.webpush] allowed_hosts")
        netloc = f"[{host}]" if ":" in host else host
        origin = f"https://{netloc}" if port == 443 else f"https://{netloc}:{port}"
        return Endpoint(origin, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))


def _split_port(pattern: str) -> tuple[str, str | None]:
    if pattern.startswith("["):  # an IPv6 literal
        host, _, rest = pattern[1:].partition("]")
        return host, rest.removeprefix(":") or None
    host, _, port = pattern.partition(":")
    return host, port or None


def is_public_address(address: str) -> bool:
    """Not loopback, private, link-local, multicast or reserved: what a job-chosen URL may reach."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_global
    except ValueError:
        return False


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [WebPushChannel]
