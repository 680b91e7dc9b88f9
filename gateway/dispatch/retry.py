"""Sending one channel's share of a batch, with retries for transient failures.

The core owns retry policy so every channel gets the same behaviour: exponential backoff
with full jitter, `Retry-After` honoured, never past the job's `expires_at`, and the same
delivery id on every attempt (it is the provider idempotency key).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import pluggy

from gateway.channel import Channel, Delivery, PermanentFailure, Result, TransientFailure
from gateway.clock import Clock
from gateway.config import DeliveryConfig, seconds
from gateway.decision import RETRIES_EXHAUSTED
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class Retrier:
    def __init__(self, config: DeliveryConfig, pm: pluggy.PluginManager, metrics: Metrics, clock: Clock,
                 rng: random.Random | None = None):
        self.max_attempts = config.max_attempts
        self.base = seconds(config.backoff_base)
        self.cap = seconds(config.backoff_max)
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()

    async def send(self, job_id: str, channel: Channel, deliveries: Sequence[Delivery]) -> list[Result]:
        """One final result per delivery: never a TransientFailure."""
        final: list[Result | None] = [None] * len(deliveries)
        pending = list(range(len(deliveries)))
        attempt = 1
        while pending:
            batch = [deliveries[i] for i in pending]
            for delivery in batch:
                delivery.attempt = attempt
            results = await self._attempt(channel, batch)
            self.pm.hook.delivery_results(job_id=job_id, channel=channel.name, deliveries=batch, results=results)
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
            if not retry:
                break
            await self.clock.sleep(delay)
            pending = retry
            attempt += 1
        return final  # type: ignore[return-value]

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], at least a tenth of it."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 10, ceiling)

    async def _attempt(self, channel: Channel, batch: list[Delivery]) -> list[Result]:
        try:
            results = await channel.send_batch(batch)
        except Exception as exc:  # a plugin bug must not take down the batch, nor go unseen
            log.exception("channel %s raised on a batch of %d", channel.name, len(batch))
            return [TransientFailure(f"channel_error: {type(exc).__name__}")] * len(batch)
        if len(results) != len(batch):
            log.error("channel %s returned %d results for %d deliveries", channel.name, len(results), len(batch))
            return [PermanentFailure("channel_contract_violation")] * len(batch)
        return list(results)
