"""Sending one channel's share of a batch, with retries for transient failures.

The core owns retry policy so every channel gets the same behaviour: exponential backoff
with full jitter, `Retry-After` honoured, never past the job's `expires_at`, and the same
delivery id on every attempt (it is the provider idempotency key).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import msgspec
import pluggy

from gateway.channel import Channel
from gateway.clock import Clock
from gateway.config import DeliveryConfig, seconds
from gateway.dispatch.breaker import Breaker
from gateway.dispatch.budget import InFlight
from gateway.loader import observe
from gateway.metrics import Metrics
from gateway.model.decision import CHANNEL_ERROR, RETRIES_EXHAUSTED
from gateway.model.delivery import Delivery, PermanentFailure, Result, TransientFailure

log = logging.getLogger(__name__)


class Postponed(msgspec.Struct, tag="postponed"):
    """Not attempted (or no longer retried): the provider's circuit is open until `until`."""

    until: float


class Retrier:
    def __init__(
        self,
        config: DeliveryConfig,
        pm: pluggy.PluginManager,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.max_attempts = config.max_attempts
        self.budget = seconds(config.max_delivery_time)
        self.base = seconds(config.backoff_base)
        self.cap = seconds(config.backoff_max)
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._budgets: dict[str, InFlight] = {}

    def breaker(self, channel: Channel, delivery: Delivery) -> Breaker:
        """The circuit of the provider that answers `delivery`."""
        key = (channel.name, channel.provider(delivery))
        found = self._breakers.get(key)
        if found is None:
            name = key[0] if key[1] == key[0] else f"{key[0]}:{key[1]}"
            found = self._breakers[key] = Breaker(
                name, self.config.breaker_failures, seconds(self.config.breaker_cooldown)
            )
        return found

    def any_open(self, channel: str) -> bool:
        """Is any of this channel's providers' circuits open (or probing)?"""
        return any(b.is_open for (name, _), b in self._breakers.items() if name == channel)

    def held(self, channel: Channel, delivery: Delivery, now: float) -> Postponed | None:
        """Postponed when the delivery's provider is open: it is not attempted."""
        breaker = self.breaker(channel, delivery)
        return None if breaker.allows(now) else Postponed(breaker.retry_at())

    async def send(self, job_id: str, channel: Channel, deliveries: Sequence[Delivery]) -> list[Result | Postponed]:
        """One final result per delivery: never a TransientFailure; Postponed when the
        provider's circuit is open (or opened before the delivery could be retried)."""
        final: list[Result | Postponed | None] = [None] * len(deliveries)
        pending = list(range(len(deliveries)))
        attempt = 1
        deadline = self.clock.now() + self.budget
        while pending:
            now = self.clock.now()
            for i in pending:
                final[i] = self.held(channel, deliveries[i], now)
            pending = [i for i in pending if final[i] is None]
            if not pending:
                break
            batch = [deliveries[i] for i in pending]
            for delivery in batch:
                delivery.attempt = attempt
            results = await self._attempt(channel, batch)
            observe(self.pm, "delivery_results", job_id=job_id, channel=channel.name, deliveries=batch, results=results)
            now = self.clock.now()
            for delivery, result in zip(batch, results, strict=True):
                self.breaker(channel, delivery).record(delivery.id, result, now)
            retry: list[int] = []
            waits: list[float] = []
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, TransientFailure):
                    self.metrics.provider_errors.inc(channel.name, result.reason)
                    if attempt < self.max_attempts:
                        retry.append(i)
                        waits.append(result.retry_after or 0.0)
                        continue
                    result = PermanentFailure(f"{RETRIES_EXHAUSTED}", f"{attempt} attempts, last: {result.reason}")
                elif isinstance(result, PermanentFailure):
                    self.metrics.provider_errors.inc(channel.name, result.reason)
                final[i] = result
            if not retry:
                break
            delay = max(max(waits), self.backoff(attempt))
            now = self.clock.now()
            for i in list(retry):
                expires = deliveries[i].expires_at
                if expires is not None and expires.timestamp() <= now + delay:
                    final[i] = PermanentFailure(RETRIES_EXHAUSTED, "the job expires before the next attempt")
                    retry.remove(i)
                elif now + delay > deadline:
                    final[i] = PermanentFailure(RETRIES_EXHAUSTED, "the next attempt would pass max_delivery_time")
                    retry.remove(i)
            if not retry:
                break
            await self.clock.sleep(delay)
            pending = retry
            attempt += 1
        return final  # type: ignore[return-value]  # every slot was filled

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], at least a tenth of it."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 10, ceiling)

    async def _attempt(self, channel: Channel, batch: list[Delivery]) -> list[Result]:
        """One attempt, at most `concurrency` deliveries in flight for this provider across
        every batch: chunks of one batch, and batches of other jobs, share that budget, so a
        batch's slowest deliveries leave room for the next batch instead of a pause."""
        limit = (
            self.config.concurrency_per_channel.get(channel.name)
            or channel.default_concurrency
            or self.config.concurrency
        )
        budget = self._budgets.get(channel.name)
        if budget is None:
            budget = self._budgets[channel.name] = InFlight(limit)
        chunks = [batch[lo : lo + limit] for lo in range(0, len(batch), limit)]
        results: list[Result] = []
        for chunk in chunks:
            await budget.acquire(len(chunk))
            try:
                results += await self._call(channel, chunk)
            finally:
                budget.release(len(chunk))
        return results

    async def _call(self, channel: Channel, batch: list[Delivery]) -> list[Result]:
        try:
            results = await channel.send_batch(batch)
        except Exception as exc:
            # A plugin bug (a request error escaping its per-delivery code): which deliveries
            # went out is unknown, so none is sent again (a retry could double them), and it
            # is no fault of the provider. Each delivery's failure says so; the log has the trace.
            log.exception(
                "channel %s raised on a batch of %d deliveries; they fail as channel_error", channel.name, len(batch)
            )
            return [PermanentFailure(CHANNEL_ERROR, f"{type(exc).__name__}: {exc}"[:300])] * len(batch)
        if len(results) != len(batch):
            log.error("channel %s returned %d results for %d deliveries", channel.name, len(results), len(batch))
            return [PermanentFailure("channel_contract_violation")] * len(batch)
        return list(results)
