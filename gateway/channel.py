"""The channel contract: what a channel plugin receives and what it returns.

A channel gets a *batch* of rendered deliveries and returns exactly one result per
delivery, in the same order. Results are data, not exceptions, so one dead token or one
refused request never aborts the rest of the batch:

    Result
     +-- Sent                 accepted by the provider
     +-- PermanentFailure     do not retry (payload refused, configuration, unknown target)
     +-- TransientFailure     retry later; `retry_after` seconds when the provider said so
     +-- InvalidToken         the token or subscription is dead: upstream should delete it

Retries, backoff and concurrency across batches belong to the core (`gateway.dispatch`),
not to each plugin: a channel makes one attempt per delivery and says what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from gateway.intake.model import Device, EmailContent, PushContent, Recipient, SpeakerContent

ContentKind = Literal["push", "email", "speaker"]
RenderedContent = PushContent | EmailContent | SpeakerContent


class Delivery(msgspec.Struct, kw_only=True):
    """One message to one device or address."""

    id: str  # stable across retries and restarts: use it as the provider idempotency key
    job_id: str
    campaign: str
    category: str
    recipient: int  # index in the job's recipient list
    user_id: str
    channel: str
    to: Device | str  # the device, or the address (email) for address-based channels
    content: Any  # the RenderedContent of the channel's content kind
    tags: list[str] = []
    expires_at: datetime | None = None
    attempt: int = 1


class Sent(msgspec.Struct, tag="sent"):
    provider_id: str | None = None


class PermanentFailure(msgspec.Struct, tag="failed"):
    reason: str
    detail: str | None = None


class TransientFailure(msgspec.Struct, tag="transient"):
    reason: str
    retry_after: float | None = None


class InvalidToken(msgspec.Struct, tag="invalid_token"):
    reason: str


Result = Sent | PermanentFailure | TransientFailure | InvalidToken


class NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Channel:
    """Base class of channel plugins. Subclass it, set the class attributes, implement
    `send_batch`, and return the class from the `register_channels` hook."""

    name: ClassVar[str]
    content_kind: ClassVar[ContentKind]
    # Which subscription of the recipient governs marketing sends on this channel.
    subscription_group: ClassVar[str]
    Config: ClassVar[type[msgspec.Struct]] = NoConfig
    # Channels that need a [channels.<name>] table are unavailable without one.
    requires_config: ClassVar[bool] = True
    # Push channels: the provider's payload limit. Rendered content over it has its body
    # shortened (or fails with payload_too_large) before any provider round trip.
    max_payload_bytes: ClassVar[int | None] = None
    # Deliveries in flight the provider takes well, in place of `delivery.concurrency`
    # (`delivery.concurrency_per_channel` still overrides it): APNs allows 1,000 streams.
    default_concurrency: ClassVar[int | None] = None

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def check_config(cls, config: Any, path: str) -> list[str]:
        """Problems a Struct cannot express (a secret that is not set, a bad URL), each
        prefixed with its key path. Run by `gateway check-config` and at start-up."""
        return []

    @classmethod
    async def create(cls, config: Any) -> Channel:
        """Build the channel inside the running loop (sessions, connection pools)."""
        return cls(config)

    def payload_size(self, content: PushContent) -> int:
        """Bytes of the provider payload this content makes (used with max_payload_bytes).
        Override with the channel's real payload builder."""
        return len(_encode(content))

    def destinations(self, recipient: Recipient) -> list[Device | str]:
        """Where this recipient can be reached on this channel; empty means no_device."""
        return [d for d in recipient.devices if d.channel == self.name]

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        raise NotImplementedError

    def read_unsubscribe_token(self, token: str) -> tuple[str, str] | None:
        """Channels that put one-click unsubscribe links in their messages verify their
        tokens here: (address, campaign), or None for a token they did not sign."""
        return None

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""


_encode = msgspec.json.Encoder().encode
T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(items: Sequence[T], fn: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """`[await fn(x) for x in items]` with at most `limit` in flight.

    A fixed set of `limit` workers pulls from a shared cursor, so a batch of 10,000
    deliveries costs `limit` tasks, not 10,000.
    """
    results: list[Any] = [None] * len(items)
    cursor = iter(range(len(items)))

    async def worker() -> None:
        for i in cursor:
            results[i] = await fn(items[i])

    workers = min(limit, len(items))
    if workers == 1:
        await worker()
    elif workers:
        await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
