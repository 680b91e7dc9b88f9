"""Apple Push Notification service, HTTP/2 provider API, with aioapns and token auth.

Several apps (bundle ids, teams, keys, sandbox or production) live in one config; a
device's `app` names one, else `default_app`. Each app has its own aioapns client, whose
ES256 provider token aioapns caches for 30 minutes (inside Apple's 20-60 minute window).

aioapns retries only connection failures, so 429/5xx come back as results and the core
retries them; its `apns-id` is derived from the delivery id, so a retry carries the same
one. A request that never answers is cut by `timeout` (aioapns waits forever).
The host comes from the protocol class, which is always our subclass of aioapns's: it
points elsewhere when `endpoint` is set (tests, the demo), an injectable seam rather than
a patch, and its header strings go as plain HPACK literals (`PlainEncoder`: h2's pure-Python
Huffman coding was ~19% of the channel's CPU). Coalescing writes to one per event-loop turn
was tried and measured slower: the gateway and the provider took turns instead of overlapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Sequence
from typing import Literal

import msgspec
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsDevelopmentClientProtocol, APNsProductionClientProtocol
from aioapns.exceptions import ConnectionError as APNsConnectionError
from aioapns.exceptions import MaxAttemptsExceeded
from h2.config import H2Configuration
from h2.connection import H2Connection

from gateway.channel import (
    Channel,
    Delivery,
    InvalidToken,
    PermanentFailure,
    Result,
    Sent,
    TransientFailure,
    map_bounded,
)
from gateway.config import ConfigError, Duration, SecretRef, seconds
from gateway.dispatch.http2 import PlainEncoder
from gateway.hookspecs import hookimpl
from gateway.intake.model import Device, PushContent

log = logging.getLogger(__name__)
# aioapns logs every connection opened and released at INFO: noise at any real volume.
logging.getLogger("aioapns").setLevel(logging.WARNING)
MAX_PAYLOAD_BYTES = 4096
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")  # a bundle id, maybe with .voip and the like
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # not allowed in an HTTP/2 header value
_IDS = uuid.UUID("6f1c5a34-8a0d-4c55-9d0e-5a3a7c2f4b10")  # namespace for apns-id from delivery ids

# Apple's reasons (PROTOCOLS.md), and what each means for the delivery.
TOKEN_ERRORS = {  # the token is dead for this app: report it so upstream deletes it
    "BadDeviceToken",  # also a sandbox token sent to production: check `sandbox`
    "Unregistered",  # 410: the app was removed from the device
    "DeviceTokenNotForTopic",
}
CREDENTIAL_ERRORS = {  # our provider token, not the device: fix the key, never blame tokens
    "ExpiredProviderToken", "InvalidProviderToken", "MissingProviderToken", "TooManyProviderTokenUpdates",
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
    concurrency: int | None = None  # requests in flight for this app (default: the channel's)


class ApnsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    apps: dict[str, AppConfig]
    default_app: str | None = None  # default: the only app
    endpoint: str | None = None  # "host:port" instead of Apple's (tests, the demo)
    ca_file: str | None = None  # trust this CA (with `endpoint`)
    max_connections: int = 10  # per app
    concurrency: int = 100  # requests in flight: bulk sends above ~100 have been seen to hang
    timeout: Duration = "10s"


def classify(status: str, reason: str) -> Result:
    if reason in TOKEN_ERRORS:
        return InvalidToken(reason)
    if reason in CREDENTIAL_ERRORS:
        log.error("apns: %s: the provider token was refused; check team_id, key_id and the key", reason)
        return PermanentFailure("credentials", reason)
    if reason in TRANSIENT_ERRORS or status in ("429", "500", "503"):
        return TransientFailure(reason or f"http_{status}")
    return PermanentFailure(reason or f"http_{status}")


class _Lean:
    """Mixed into aioapns's protocol: HPACK strings without Huffman coding, the per-request
    headers kept out of the dynamic table, and h2's checks of our own outgoing headers
    skipped (~15% of the channel's CPU): every value is ours, a hex token (intake checks
    it), a UUID, numbers, the configured topic (`check_config`), the JWT, and the
    collapse key, which `_send` checks."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.conn = H2Connection(config=H2Configuration(client_side=True, validate_outbound_headers=False))
        self.conn.encoder = PlainEncoder(unindexed=(":path", "apns-id", "apns-expiration"))


def _protocol_for(endpoint: str | None, sandbox: bool) -> type:
    base = APNsDevelopmentClientProtocol if sandbox else APNsProductionClientProtocol
    where = {}
    if endpoint:
        host, _, port = endpoint.rpartition(":")
        where = {"APNS_SERVER": host, "APNS_PORT": int(port)}
    return type("GatewayAPNsProtocol", (_Lean, base), where)


class ApnsChannel(Channel):
    name = "apns"
    content_kind = "push"
    subscription_group = "push"
    Config = ApnsConfig
    max_payload_bytes = MAX_PAYLOAD_BYTES

    def __init__(self, config: ApnsConfig, clients: dict[str, APNs]):
        super().__init__(config)
        self.clients = clients
        # Apps have their own credentials and streams: each gets its own in-flight limit.
        self.limits = {name: asyncio.Semaphore(app.concurrency or config.concurrency)
                       for name, app in config.apps.items()}
        self.default_app = config.default_app or next(iter(config.apps))
        self.timeout = seconds(config.timeout)

    @classmethod
    def check_config(cls, config: ApnsConfig, path: str) -> list[str]:
        problems = []
        if not config.apps:
            problems.append(f"{path}.apps: configure at least one app")
        if config.default_app is not None and config.default_app not in config.apps:
            problems.append(f"{path}.default_app: no app named {config.default_app!r}")
        if config.default_app is None and len(config.apps) > 1:
            problems.append(f"{path}.default_app: required with several apps")
        for name, app in config.apps.items():
            if not _TOPIC.match(app.topic):
                problems.append(f"{path}.apps.{name}.topic: expected a bundle id (letters, digits, '.', '-', '_')")
            try:
                key = app.key.resolve(f"{path}.apps.{name}.key").reveal()
                if "PRIVATE KEY" not in key:
                    problems.append(f"{path}.apps.{name}.key: expected the .p8 key in PEM form")
            except ConfigError as exc:
                problems += exc.problems
        return problems

    @classmethod
    async def create(cls, config: ApnsConfig) -> ApnsChannel:
        context = ssl.create_default_context(cafile=config.ca_file)
        clients = {}
        for name, app in config.apps.items():
            client = APNs(key=app.key.resolve(f"channels.apns.apps.{name}.key").reveal(), key_id=app.key_id,
                          team_id=app.team_id, topic=app.topic, use_sandbox=app.sandbox, ssl_context=context,
                          max_connections=config.max_connections)
            client.pool.protocol_class = _protocol_for(config.endpoint, app.sandbox)
            clients[name] = client
        return cls(config, clients)

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
        # Exactly as aioapns serialises it (default separators): the bytes on the wire.
        return len(json.dumps(self.payload(content), ensure_ascii=False).encode())

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await map_bounded(deliveries, self._send, self.config.concurrency)

    async def _send(self, delivery: Delivery) -> Result:
        device = delivery.to
        assert isinstance(device, Device) and device.token is not None
        app_name = device.app or self.default_app
        client = self.clients.get(app_name)
        if client is None:
            return PermanentFailure("unknown_app", f"no app {app_name!r} in [channels.apns.apps]")
        app = self.config.apps[app_name]
        content: PushContent = delivery.content
        if content.collapse_key and _CONTROL.search(content.collapse_key):
            # h2 would refuse the header mid-send (and the batch with it): this message alone fails
            return PermanentFailure("invalid_header", "collapse_key has a control character")
        ttl = None
        if delivery.expires_at is not None:
            ttl = max(0, int(delivery.expires_at.timestamp() - time.time()))
        request = NotificationRequest(
            device_token=device.token, message=self.payload(content),
            notification_id=str(uuid.uuid5(_IDS, delivery.id)),  # the same apns-id on every retry
            time_to_live=ttl, priority=app.priority if app.push_type == "alert" else 5,
            collapse_key=(content.collapse_key or None), push_type=PushType(app.push_type))
        try:
            async with self.limits[app_name], asyncio.timeout(self.timeout):  # no Task per message
                result = await client.send_notification(request)
        except TimeoutError:
            return TransientFailure("timeout")
        except (MaxAttemptsExceeded, APNsConnectionError, OSError) as exc:
            return TransientFailure(f"connection_error: {type(exc).__name__}")
        if result.is_successful:
            return Sent(result.notification_id)
        return classify(str(result.status), result.description or "")

    async def aclose(self) -> None:
        for client in self.clients.values():
            client.pool.close()


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [ApnsChannel]
