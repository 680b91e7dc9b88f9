"""When a delivery that failed transiently is tried again: governed by time, not counts.

A transient failure (a provider fault) is retried with exponential backoff and full
jitter, or after the provider's `Retry-After` when longer, until `max_delivery_time` after
the delivery's *first* attempt (or the job's `expires_at`), whatever the number of
attempts. Within a short in-memory window (`retry_window`) the retry waits in memory;
past it, the delivery is postponed to the store (`deferred: retrying`, with its attempt
count, first attempt and last error), released by the scheduler when due, and goes on
from there: a provider down for an hour delivers everything when it returns, and a
restart loses no count.
"""

from __future__ import annotations

import random

import msgspec

from gateway.config import DeliveryConfig, seconds
from gateway.model.decision import PROVIDER_UNAVAILABLE, RETRIES_EXHAUSTED, RETRYING
from gateway.model.delivery import Delivery, PermanentFailure, TransientFailure


class Postponed(msgspec.Struct, tag="postponed"):
    """Not attempted now: it waits in the store until `until` (the provider's circuit is
    open, it is being retried, or its channel is saturated), with its retry state."""

    until: float
    reason: str = PROVIDER_UNAVAILABLE
    attempts: int = 0
    first_attempt: float | None = None
    last_error: str | None = None


class RetryPolicy:
    def __init__(self, config: DeliveryConfig, rng: random.Random | None = None):
        self.budget = seconds(config.max_delivery_time)
        self.window = seconds(config.retry_window)
        self.base = seconds(config.backoff_base)
        self.cap = seconds(config.backoff_max)
        self.rng = rng or random.Random()

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))], at least a tenth of it."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        return self.rng.uniform(ceiling / 10, ceiling)

    def after(
        self, delivery: Delivery, failure: TransientFailure, now: float, started: float
    ) -> float | Postponed | PermanentFailure:
        """What comes after this transient failure: a delay to retry after, in memory; a
        postponement to the store; or the end (retries exhausted)."""
        delay = max(failure.retry_after or 0.0, self.backoff(delivery.attempt))
        at = now + delay
        first = delivery.first_attempt if delivery.first_attempt is not None else now
        expires = delivery.expires_at.timestamp() if delivery.expires_at is not None else None
        if expires is not None and at >= expires:
            return PermanentFailure(
                RETRIES_EXHAUSTED,
                f"{delivery.attempt} attempts, last: {failure.reason}; the job expires before the next",
            )
        if at > first + self.budget:
            return PermanentFailure(
                RETRIES_EXHAUSTED,
                f"{delivery.attempt} attempts, last: {failure.reason}; the next would pass max_delivery_time",
            )
        if at > started + self.window:
            return Postponed(at, RETRYING, delivery.attempt, first, failure.reason)
        return delay

    def busy_until(self, now: float) -> float:
        """When a delivery held back by a busy channel is due again: a second or two,
        spread so the held ones do not all come back at once."""
        return now + max(1.0, self.base) * self.rng.uniform(1.0, 2.0)

    def postponed(self, delivery: Delivery, until: float, reason: str) -> Postponed | PermanentFailure:
        """Held back without an attempt (a circuit open, a saturated channel): the delivery
        keeps its count and first attempt, so a hold cannot stretch its retries past
        max_delivery_time."""
        first = delivery.first_attempt
        if first is not None and until > first + self.budget:
            return PermanentFailure(
                RETRIES_EXHAUSTED,
                f"{delivery.attempt - 1} attempts; {reason} until past max_delivery_time",
            )
        return Postponed(until, reason, delivery.attempt - 1, first)
