"""Smart-speaker channel: a signed webhook to a hub the user owns.

No speaker vendor offers free-form announcements through a public push API, so the
realistic route is a webhook to a hub (a Home Assistant instance, a skill backend) that
speaks the message on a device. Requests are signed with the Standard Webhooks scheme:

    webhook-id:        the delivery id (stable across retries: the receiver's dedupe key)
    webhook-timestamp: epoch seconds
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

Targets (URL + secret) come from config; a job names a target, never a URL, so a job
cannot make the gateway call an arbitrary address.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from gateway.plugin import (
    Channel,
    ConfigError,
    Delivery,
    Device,
    Duration,
    InvalidToken,
    PermanentFailure,
    Recipient,
    RequestError,
    Result,
    SecretRef,
    Sent,
    TransientFailure,
    hookimpl,
    http1_transport,
    invalid_request,
    map_bounded,
    parse_retry_after,
    seconds,
    webhook_headers,
    webhook_key,
)

# Statuses the Standard Webhooks guidance treats as "slow down", not "broken".
THROTTLE_STATUSES = frozenset({408, 425, 429, 502, 503, 504})


class Target(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    secret: SecretRef
    timeout: Duration = "15s"


class SpeakerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    targets: dict[str, Target] = {}
    # Requests in flight at once across all targets.
    concurrency: int = 128
    # "gateway": our HTTP/1.1 client (gateway/transport/http1.py, ~4x less CPU per request);
    # "aiohttp": aiohttp's client
    transport: Literal["gateway", "aiohttp"] = "gateway"


def classify(status: int, retry_after: float | None) -> Result:
    """The provider response table of PROTOCOLS.md, as data."""
    if 200 <= status < 300:
        return Sent()
    if 300 <= status < 400:
        return PermanentFailure("redirect_refused", f"HTTP {status}: redirects are not followed")
    if status == 410:
        return InvalidToken("target_gone")
    if status in THROTTLE_STATUSES or status >= 500:
        return TransientFailure(f"http_{status}", retry_after)
    return PermanentFailure(f"http_{status}")


class _Target:
    def __init__(self, name: str, config: Target, key: bytes, connections: int, transport: str):
        self.name = name
        self.url = config.url
        # Kept-alive HTTP/1.1 to the hub: by default the lean client, as every request is a
        # small POST to this one origin (gateway/transport/http1.py says why not aiohttp's).
        self.pool = http1_transport(transport, config.url, max_idle=connections)  # type: ignore[arg-type]
        self.key = key
        self.timeout = seconds(config.timeout)


class SpeakerChannel(Channel):
    name = "speaker"
    content_kind = "speaker"
    subscription_group = "speaker"
    Config = SpeakerConfig

    def __init__(self, config: SpeakerConfig, targets: dict[str, _Target]):
        super().__init__(config)
        self.targets = targets

    @classmethod
    def check_config(cls, config: SpeakerConfig, path: str) -> list[str]:
        problems = []
        for name, target in config.targets.items():
            where = f"{path}.targets.{name}"
            url = urlsplit(target.url)
            if url.scheme not in ("http", "https") or not url.hostname:
                problems.append(f"{where}.url: expected an http(s) URL, got {target.url!r}")
            try:
                webhook_key(target.secret.resolve(f"{where}.secret").reveal())
            except ConfigError as exc:
                problems += exc.problems
            except ValueError as exc:
                problems.append(f"{where}.secret: {exc}")
        return problems

    @classmethod
    async def create(cls, config: SpeakerConfig) -> SpeakerChannel:
        targets = {
            name: _Target(
                name,
                t,
                webhook_key(t.secret.resolve(f"channels.speaker.targets.{name}.secret").reveal()),
                config.concurrency,
                config.transport,
            )
            for name, t in config.targets.items()
        }
        return cls(config, targets)

    def provider(self, delivery: Delivery) -> str:
        """Each hub is its own provider: one that is down holds back only its devices."""
        device = delivery.to
        return device.target or "" if isinstance(device, Device) else ""

    def destinations(self, recipient: Recipient) -> list[Device | str]:
        return [d for d in recipient.devices if d.channel == "speaker"]

    def max_in_flight(self) -> int:
        return self.config.concurrency

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await map_bounded(deliveries, self._send, self.config.concurrency)

    async def _send(self, delivery: Delivery) -> Result:
        device = delivery.to
        assert isinstance(device, Device)
        target = self.targets.get(device.target or "")
        if target is None:
            return PermanentFailure("unknown_target", f"no target {device.target!r} in [channels.speaker.targets]")
        body = _encode(
            {
                "type": "speaker.announce",
                "speech": delivery.content.speech,
                "device_id": device.device_id,
                "target": device.target,
                "user_id": delivery.user_id,
                "campaign": delivery.campaign,
                "job_id": delivery.job_id,
            }
        )
        timestamp = int(time.time())
        headers = webhook_headers(target.key, delivery.id, timestamp, body)
        try:
            response = await target.pool.post(target.pool.path, headers, body, timeout=target.timeout)
        except RequestError as exc:  # our side: a value that cannot go in a header
            return invalid_request(exc)
        except TimeoutError:
            return TransientFailure("timeout")
        except OSError as exc:  # refused, reset, TLS, a malformed or cut response
            return TransientFailure(f"connection_error: {type(exc).__name__}")
        if 200 <= response.status < 300:  # the common case reads no header: they are parsed on first read
            return Sent()
        # A 410 is the hub saying this device is gone: it is reported for this delivery alone
        # (its decision lists the device), never for the hub's other devices.
        return classify(response.status, parse_retry_after(response.headers.get("retry-after"), time.time()))

    async def aclose(self) -> None:
        for target in self.targets.values():
            await target.pool.aclose()


_encode = msgspec.json.Encoder().encode


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [SpeakerChannel]
