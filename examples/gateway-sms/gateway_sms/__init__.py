"""SMS through a JSON HTTP API: an example third-party channel for the gateway.

POST {api_url}/messages  {"from": sender, "to": "+33...", "text": "..."}  with a bearer key;
2xx is sent, 400 with an invalid number is a dead "token", 429/5xx are transient.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import msgspec

from gateway.plugin import (
    Channel,
    ConfigError,
    Delivery,
    InvalidToken,
    PermanentFailure,
    Result,
    SecretRef,
    Sent,
    TransientFailure,
    hookimpl,
    map_bounded,
    parse_retry_after,
)


class SmsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_url: str
    api_key: SecretRef
    sender: str
    concurrency: int = 50


class SmsChannel(Channel):
    name = "sms"
    content_kind = "push"  # title and body become the text
    subscription_group = "sms"
    Config = SmsConfig

    def __init__(self, config: SmsConfig, key: str, session: aiohttp.ClientSession):
        super().__init__(config)
        self.key = key
        self.session = session

    @classmethod
    def check_config(cls, config: SmsConfig, path: str) -> list[str]:
        try:
            config.api_key.resolve(f"{path}.api_key")
        except ConfigError as exc:
            return exc.problems
        return []

    @classmethod
    async def create(cls, config: SmsConfig) -> SmsChannel:
        key = config.api_key.resolve("channels.sms.api_key").reveal()
        return cls(config, key, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))

    def destinations(self, recipient):  # type: ignore[no-untyped-def]
        return [d for d in recipient.devices if d.channel == "sms" and d.token]

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await map_bounded(deliveries, self._send, self.config.concurrency)

    async def _send(self, delivery: Delivery) -> Result:
        content = delivery.content
        text = ": ".join(part for part in (content.title, content.body) if part)
        body = {"from": self.config.sender, "to": delivery.to.token, "text": text, "reference": delivery.id}
        try:
            async with self.session.post(
                f"{self.config.api_url.rstrip('/')}/messages",
                json=body,
                headers={"Authorization": f"Bearer {self.key}"},
            ) as response:
                reply = await response.json(content_type=None)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), 0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return TransientFailure(f"connection_error: {type(exc).__name__}")
        if 200 <= status < 300:
            return Sent(str(reply.get("id")))
        if status == 400 and reply.get("error") == "invalid_number":
            return InvalidToken("invalid_number")
        if status == 429 or status >= 500:
            return TransientFailure(f"http_{status}", retry_after)
        return PermanentFailure(f"http_{status}", str(reply.get("error")))

    async def aclose(self) -> None:
        await self.session.close()


@hookimpl
def register_channels() -> list[type[Channel]]:
    return [SmsChannel]
