"""Apple Push Notification service, HTTP/2 provider API, with token auth.

Several apps (bundle ids, teams, keys, sandbox or production) live in one config; a
device's `app` names one, else `default_app`. Each app has its own ES256 provider token,
made again every 30 minutes (inside Apple's 20-60 minute window), and its own connections
(a team's token may not be good for another team's topics): one carries up to the 1,000
streams Apple allows, more open as needed, up to `max_connections`.

The HTTP/2 client is our own (`gateway.transport.http2`), not aioapns and h2: h2 alone
cost ~100 us of CPU per request and aioapns about as much again, where one APNs provider
is expected to reach 10,000 requests/s on two cores (`benchmarks/http2.py`). A 429/5xx
comes back as a result and the core retries it; the `apns-id` is derived from the
delivery id, so a retry carries the same one. A request unanswered after `timeout` is
cut (RST_STREAM) and retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.plugin import (
    ApnsTransport,
    Channel,
    ConfigError,
    Delivery,
    Device,
    Duration,
    Http2Response,
    InvalidToken,
    PermanentFailure,
    PushContent,
    Result,
    SecretRef,
    Sent,
    Throttled,
    TransientFailure,
    apns_transport,
    did_you_mean,
    hookimpl,
    invalid_request,
    report_answers,
    seconds,
)

log = logging.getLogger(__name__)
advice = Throttled(log)  # per failed delivery: at most a line a minute
HOSTS = {False: "api.push.apple.com", True: "api.sandbox.push.apple.com"}
TOKEN_SECONDS = 30 * 60  # Apple: refresh no more often than every 20 minutes, at least every 60
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")  # a bundle id, maybe with .voip and the like
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # not allowed in an HTTP/2 header value
_IDS = uuid.UUID("6f1c5a34-8a0d-4c55-9d0e-5a3a7c2f4b10")  # namespace for apns-id from delivery ids
_NAMESPACE = _IDS.bytes
_VARIANT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}  # a hex digit with the top bits 10

# Apple's reasons (PROTOCOLS.md), and what each means for the delivery.
TOKEN_ERRORS = {  # the token is dead for this app: report it so upstream deletes it
    "BadDeviceToken",  # also a sandbox token sent to production: check `sandbox`
    "Unregistered",  # 410: the app was removed from the device
    "DeviceTokenNotForTopic",
}
CREDENTIAL_ERRORS = {  # our provider token, not the device: fix the key, never blame tokens
    "ExpiredProviderToken",
    "InvalidProviderToken",
    "MissingProviderToken",
    "TooManyProviderTokenUpdates",
}
TRANSIENT_ERRORS = {"TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown", "IdleTimeout"}
# Everything else (Forbidden, ExpiredToken, PayloadTooLarge, BadTopic, TopicDisallowed, ...) is permanent.


class AppConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    team_id: str
    key_id: str
    key: SecretRef  # the .p8 signing key (PEM)
    topic: str  # the bundle id
    sandbox: bool = False
    push_type: Literal["alert", "background"] = "alert"
    priority: Literal[5, 10] = 10


class ApnsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    apps: dict[str, AppConfig]
    default_app: str | None = None  # default: the only app
    endpoint: str | None = None  # "host:port" instead of Apple's (tests, the demo)
    ca_file: str | None = None  # trust this CA (with `endpoint`)
    max_connections: int = 4  # per app; each carries up to the streams the server allows (1,000)
    timeout: Duration = "10s"
    # "gateway": our HTTP/2 client (gateway/transport/http2.py, ~7x less CPU per request);
    # "aioapns": the aioapns library (it signs its own provider tokens with the same key)
    transport: Literal["gateway", "aioapns"] = "gateway"


def classify(status: str, reason: str) -> Result:
    if reason in TOKEN_ERRORS:
        return InvalidToken(reason)
    if reason in CREDENTIAL_ERRORS:
        advice.error("apns: %s: the provider token was refused; check team_id, key_id and the key", reason)
        return PermanentFailure("credentials", reason)
    if reason in TRANSIENT_ERRORS or status in ("429", "500", "503"):
        return TransientFailure(reason or f"http_{status}")
    return PermanentFailure(reason or f"http_{status}")


def apns_id_for(delivery_id: str) -> bytes:
    """`str(uuid.uuid5(_IDS, delivery_id))`, as bytes, in a sixth of the time (uuid5 was
    ~5% of the channel's CPU): SHA-1 of namespace and name, version 5, RFC 4122 variant."""
    h = hashlib.sha1(_NAMESPACE + delivery_id.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}".encode()


def _is_p256_key(pem: str) -> bool:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


class ProviderToken:
    """An app's provider token (ES256 JWT): `kid` the key id, `iss` the team, `iat` when
    it was made; made again after TOKEN_SECONDS."""

    def __init__(self, team_id: str, key_id: str, key_pem: str, now: Callable[[], float] = time.time):
        self.team_id, self.key_id = team_id, key_id
        self.key = load_pem_private_key(key_pem.encode(), password=None)
        self.now = now
        self.header = b""
        self.made: float = -TOKEN_SECONDS

    def current(self) -> bytes:
        """The `authorization` header's value."""
        now = self.now()
        if now - self.made >= TOKEN_SECONDS:
            token = jwt.encode(
                {"iss": self.team_id, "iat": int(now)},
                self.key,  # type: ignore[arg-type]
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
            self.header, self.made = b"bearer " + token.encode(), now
        return self.header


class ApnsChannel(Channel):
    name = "apns"
    content_kind = "push"
    subscription_group = "push"
    Config = ApnsConfig
    max_payload_bytes = MAX_PAYLOAD_BYTES
    default_concurrency = 1000  # the streams Apple allows on one connection

    def __init__(self, config: ApnsConfig, pools: dict[str, ApnsTransport], tokens: dict[str, ProviderToken]):
        super().__init__(config)
        self.pools = pools  # app -> its connections
        self.tokens = tokens
        # The headers every request of an app carries, pseudo-headers first (RFC 9113 8.3).
        self.fixed = {
            name: ((b":method", b"POST"), (b":scheme", b"https"), (b":authority", pools[name].authority))
            for name in config.apps
        }
        self.app_headers = {
            name: (
                (b"apns-topic", app.topic.encode()),
                (b"apns-push-type", app.push_type.encode()),
                (b"apns-priority", b"%d" % (app.priority if app.push_type == "alert" else 5)),
            )
            for name, app in config.apps.items()
        }
        self.default_app = config.default_app or next(iter(config.apps))
        self.timeout = seconds(config.timeout)

    @classmethod
    def check_config(cls, config: ApnsConfig, path: str) -> list[str]:
        problems = []
        if not config.apps:
            problems.append(f"{path}.apps: configure at least one app")
        if config.default_app is not None and config.default_app not in config.apps:
            hint = did_you_mean(config.default_app, config.apps)
            problems.append(f"{path}.default_app: no app named {config.default_app!r}{hint}")
        if config.default_app is None and len(config.apps) > 1:
            problems.append(f"{path}.default_app: required with several apps")
        for name, app in config.apps.items():
            if not _TOPIC.match(app.topic):
                problems.append(f"{path}.apps.{name}.topic: expected a bundle id (letters, digits, '.', '-', '_')")
            try:
                key = app.key.resolve(f"{path}.apps.{name}.key").reveal()
                if "PRIVATE KEY" not in key:
                    problems.append(f"{path}.apps.{name}.key: expected the .p8 key in PEM form")
                elif not _is_p256_key(key):
                    problems.append(f"{path}.apps.{name}.key: not a readable P-256 private key (ES256 needs one)")
            except ConfigError as exc:
                problems += exc.problems
        return problems

    @classmethod
    async def create(cls, config: ApnsConfig) -> ApnsChannel:
        context = ssl.create_default_context(cafile=config.ca_file)
        pools, tokens = {}, {}
        for name, app in config.apps.items():
            host, _, port = (config.endpoint or f"{HOSTS[app.sandbox]}:443").rpartition(":")
            key = app.key.resolve(f"channels.apns.apps.{name}.key").reveal()
            pools[name] = apns_transport(
                config.transport,
                host,
                int(port),
                ssl=context,
                max_connections=config.max_connections,
                volatile=(b":path", b"apns-id", b"apns-expiration"),
                key=key,
                key_id=app.key_id,
                team_id=app.team_id,
                topic=app.topic,
                sandbox=app.sandbox,
            )
            tokens[name] = ProviderToken(app.team_id, app.key_id, key)
        return cls(config, pools, tokens)

    def payload(self, content: PushContent) -> dict:
        alert = {k: v for k, v in (("title", content.title), ("body", content.body)) if v}
        aps: dict = {"alert": alert} if alert else {"content-available": 1}
        if content.badge is not None:
            aps["badge"] = content.badge
        if content.sound:
            aps["sound"] = content.sound
        if content.image:
            aps["mutable-content"] = 1  # a notification service extension fetches it
        message: dict = {"aps": aps}
        if content.deep_link:
            message["deep_link"] = content.deep_link
        if content.image:
            message["image"] = content.image
        for key, value in (content.data or {}).items():
            message.setdefault(key, value)
        return message

    def payload_size(self, content: PushContent) -> int:
        return len(_encode(self.payload(content)))  # exactly the bytes `_request` sends

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        """Each app's requests go to its connections as one `request_all`: no coroutine per
        message (the core bounds a batch to the deliveries in flight it allows). Each
        answer is reported as its stream ends."""
        report = report_answers()
        results: list[Result | None] = [None] * len(deliveries)
        apns_ids: list[bytes] = [b""] * len(deliveries)
        by_app: dict[str, tuple[list[int], list[tuple[list[tuple[bytes, bytes]], bytes]]]] = {}
        for i, delivery in enumerate(deliveries):
            try:
                request = self._request(delivery)
            except Exception as exc:  # this delivery's request cannot be built: it fails alone
                request = invalid_request(exc)
            if isinstance(request, tuple):
                app_name, apns_ids[i], headers, body = request
                indexes, requests = by_app.setdefault(app_name, ([], []))
                indexes.append(i)
                requests.append((headers, body))
            else:
                results[i] = request
                report(delivery, request)

        def settled(indexes: list[int]) -> Callable[[int, Http2Response | Exception], None]:
            def on_outcome(n: int, outcome: Http2Response | Exception) -> None:
                i = indexes[n]
                results[i] = self._result(apns_ids[i], outcome)
                report(deliveries[i], results[i])  # type: ignore[arg-type]

            return on_outcome

        sends = [
            self.pools[name].request_all(requests, self.timeout, settled(indexes))
            for name, (indexes, requests) in by_app.items()
        ]
        if len(sends) == 1:  # one app (the usual case): no task
            await sends[0]
        else:
            await asyncio.gather(*sends)
        return results  # type: ignore[return-value]  # every slot was filled

    def provider(self, delivery: Delivery) -> str:
        """An app in its environment: each has its own key, topic and connections."""
        device = delivery.to
        app = (device.app if isinstance(device, Device) else None) or self.default_app
        sandbox = app in self.config.apps and self.config.apps[app].sandbox
        return f"{app}:{'sandbox' if sandbox else 'production'}"

    def _request(self, delivery: Delivery) -> tuple[str, bytes, list[tuple[bytes, bytes]], bytes] | Result:
        """(app, apns-id, headers, body) for the delivery, or why it cannot be sent."""
        device = delivery.to
        assert isinstance(device, Device) and device.token is not None
        app_name = device.app or self.default_app
        if app_name not in self.pools:
            return PermanentFailure("unknown_app", f"no app {app_name!r} in [channels.apns.apps]")
        content: PushContent = delivery.content
        apns_id = apns_id_for(delivery.id)  # the same apns-id on every retry
        headers = [
            *self.fixed[app_name],
            (b":path", b"/3/device/" + device.token.encode()),
            (b"authorization", self.tokens[app_name].current()),
            *self.app_headers[app_name],
            (b"apns-id", apns_id),
        ]
        if delivery.expires_at is not None:
            headers.append((b"apns-expiration", b"%d" % max(0, int(delivery.expires_at.timestamp()))))
        if content.collapse_key:
            collapse_id = content.collapse_key.encode()
            if _CONTROL.search(content.collapse_key) or len(collapse_id) > MAX_COLLAPSE_ID_BYTES:
                # our side (no header may carry a control; Apple takes 64 bytes): this message alone fails
                return PermanentFailure("invalid_request", "collapse_key has a control character or is over 64 bytes")
            headers.append((b"apns-collapse-id", collapse_id))
        return app_name, apns_id, headers, _encode(self.payload(content))

    @staticmethod
    def _result(apns_id: bytes, outcome: Http2Response | Exception) -> Result:
        if isinstance(outcome, TimeoutError):
            return TransientFailure("timeout")
        if isinstance(outcome, Exception):  # Http2Error, OSError: the connection, not the message
            return TransientFailure(f"connection_error: {type(outcome).__name__}")
        if outcome.status == 200:
            return Sent(apns_id.decode())
        reason = ""
        try:
            reason = str(msgspec.json.decode(outcome.body).get("reason", ""))
        except (msgspec.DecodeError, AttributeError):
            pass
        return classify(str(outcome.status), reason)

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()


_encode = msgspec.json.Encoder().encode


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [ApnsChannel]
