"""The channel contract: a channel plugin's behaviour (this class) over the data of
`gateway.model.delivery` (a batch of `Delivery` in, one `Result` per delivery out, in the
same order).

Retries, backoff and concurrency across batches belong to the core (`gateway.dispatch`),
not to each plugin: a channel makes one attempt per delivery and says what happened.
Plugin authors import all of this from `gateway.plugin`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from gateway.model.decision import INVALID_REQUEST
from gateway.model.delivery import Delivery, PermanentFailure, RenderedContent, Result
from gateway.model.job import Device, PushContent, Recipient

ContentKind = Literal["push", "email", "speaker"]
__all__ = [
    "Answered",
    "Channel",
    "ContentKind",
    "NoConfig",
    "RenderedContent",
    "answers_to",
    "invalid_request",
    "map_bounded",
    "parse_retry_after",
    "report_answers",
]
log = logging.getLogger(__name__)


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

    def max_in_flight(self) -> int | None:
        """Requests this channel keeps in flight at most, as its config says (the
        `concurrency` you pass to `map_bounded`, the size of your connection pool), or
        None. The gateway sends as many of a job's batches side by side as keep this many
        busy, and no more: more would only queue inside the channel."""
        return None

    def provider(self, delivery: Delivery) -> str:
        """Who answers this delivery, for the circuit breaker: a provider that keeps failing
        is held back alone, not the channel's other providers (a push service's origin, an
        APNs app, a webhook target). Default: the channel is one provider."""
        return self.name

    def check_recipient(self, recipient: Recipient) -> list[tuple[str, str]]:
        """Problems with a recipient's devices or address that this channel's config makes
        unusable (a push service not allowed, an address its relay cannot take), found at
        intake: (path below the recipient, e.g. `devices[0].token`, message). Each is a 400
        naming the field, before anything is stored."""
        return []

    def destinations(self, recipient: Recipient) -> list[Device | str]:
        """Where this recipient can be reached on this channel; empty means no_device."""
        return [d for d in recipient.devices if d.channel == self.name]

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        raise NotImplementedError

    def read_unsubscribe_token(self, token: str) -> tuple[str, ...] | None:
        """Channels that put one-click unsubscribe links in their messages verify their
        tokens here: (address, campaign) or (address, campaign, tenant) (`Delivery.tenant`;
        opt-outs are per tenant), or None for a token they did not sign."""
        return None

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""


_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


Answered = Callable[[Delivery, Result], None]
_answered: ContextVar[Answered | None] = ContextVar("answered", default=None)
# The channel's limiters, shared by every batch it is sending (the core sets this): a
# `map_bounded` limit holds across them, not per call.
_limits: ContextVar[dict[int, Gate] | None] = ContextVar("limits", default=None)


class Gate:
    """A counting limiter, first come first served, that takes no await when a slot is free
    (it is taken once per delivery)."""

    __slots__ = ("free", "waiters")

    def __init__(self, limit: int):
        self.free = limit
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over as we were cancelled: pass it on
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next in line
                return
        self.free += 1


def report_answers() -> Answered:
    """The function to call with each delivery's answer as soon as it arrives, inside
    `send_batch` or from a callback it set up (it is bound here, in the batch's context).
    The gateway records answers as they come, so after a crash, or an error later in the
    batch, only deliveries without one go again. `map_bounded` reports for you."""
    sink = _answered.get()
    return sink if sink is not None else _ignore


def _ignore(delivery: Delivery, result: Result) -> None:
    pass


@contextmanager
def answers_to(sink: Answered, limits: dict[int, Gate] | None = None) -> Iterator[None]:
    """Where `report_answers` sends them while a batch is sent, and the channel's shared
    limiters (the core sets both, a `limits` dict per channel)."""
    token = _answered.set(sink)
    shared = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(shared)
        _answered.reset(token)


async def map_bounded(items: Sequence[T], fn: Callable[[T], Awaitable[Result]], limit: int) -> list[Result]:
    """`[await fn(x) for x in items]` with at most `limit` in flight, where whatever `fn`
    raises for one item becomes that item's result (`invalid_request`), never its
    neighbours': a request that cannot be built fails alone. Each delivery's answer is
    reported as soon as it is known (`report_answers`).

    The limit holds across every batch the channel is sending at once (the gateway sends a
    job's batches side by side): pass your `concurrency` setting and the provider never
    sees more. A fixed set of workers pulls from a shared cursor, so a batch of 10,000
    deliveries costs `limit` tasks, not 10,000.
    """
    results: list[Any] = [None] * len(items)
    cursor = iter(range(len(items)))
    report = report_answers()
    limits = _limits.get()
    gate = None
    if limits is not None:
        gate = limits.get(limit)
        if gate is None:
            gate = limits[limit] = Gate(limit)

    async def one(item: T) -> Result:
        try:
            return await fn(item)
        except Exception as exc:
            return invalid_request(exc)

    async def worker() -> None:
        for i in cursor:
            item = items[i]
            if gate is None:
                result = await one(item)
            else:
                if gate.free > 0 and not gate.waiters:
                    gate.free -= 1
                else:
                    await gate.take()
                try:
                    result = await one(item)
                finally:
                    gate.give()
            results[i] = result
            if isinstance(item, Delivery):
                report(item, result)

    workers = min(limit, len(items))
    if workers == 1:
        await worker()
    elif workers:
        await asyncio.gather(*(worker() for _ in range(workers)))
    return results


def invalid_request(exc: BaseException) -> PermanentFailure:
    """The result of a delivery whose request could not be built (an encoding, an address,
    key material): our side, so permanent for it alone and no fault of the provider."""
    log.debug("a request could not be built", exc_info=exc)
    return PermanentFailure(INVALID_REQUEST, f"{type(exc).__name__}: {exc}"[:300])


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
