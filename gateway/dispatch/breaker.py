"""A circuit breaker per provider.

A provider is what a channel's `provider(delivery)` names: a push service's origin, an
APNs app and environment, an SMTP relay, a webhook target. One that keeps failing
transiently (timeouts, refused connections, 5xx, 429) is opened: for a cooldown its
deliveries are not attempted but *deferred* in the store (reason `provider_unavailable`),
so they hold up neither the channel's other providers nor other channels. After the
cooldown a probe goes through: a success closes the breaker, a failure opens it again for
a longer cooldown (doubling, capped).

Only the provider's faults count (a refused payload, a dead token or a request we could
not build are not), and only distinct deliveries: one message retried again and again
cannot open a circuit that every other message would pass.
"""

from __future__ import annotations

import logging

from gateway.model.delivery import Result, Sent, TransientFailure

log = logging.getLogger(__name__)


class Breaker:
    def __init__(self, name: str, threshold: int, cooldown: float, max_cooldown: float = 600.0):
        self.name = name
        self.threshold = threshold  # distinct deliveries failing in a row that open it
        self.cooldown = cooldown  # seconds, the first time
        self.max_cooldown = max_cooldown
        self.failing: set[str] = set()  # deliveries that failed since the last success
        self.open_until: float | None = None
        self.current_cooldown = 0.0

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def allows(self, now: float) -> bool:
        """Closed, or open with its cooldown over (a probe goes through)."""
        return self.open_until is None or now >= self.open_until

    def retry_at(self) -> float:
        assert self.open_until is not None
        return self.open_until

    def record(self, delivery_id: str, result: Result, now: float) -> None:
        """One delivery's answer: a success closes it; a transient failure of a delivery
        not already counted adds up; anything else is not the provider failing."""
        if type(result) is Sent:
            if self.open_until is not None:
                log.info(
                    "provider %s recovered: circuit closed",
                    self.name,
                    extra={"event": "breaker.closed", "provider": self.name},
                )
            if self.failing or self.open_until is not None:
                self.failing.clear()
                self.open_until, self.current_cooldown = None, 0.0
            return
        if type(result) is not TransientFailure or delivery_id in self.failing:
            return
        self.failing.add(delivery_id)
        probing = self.open_until is not None and now >= self.open_until
        if probing or (self.open_until is None and len(self.failing) >= self.threshold):
            self.current_cooldown = min(self.max_cooldown, self.current_cooldown * 2 or self.cooldown)
            self.open_until = now + self.current_cooldown
            self.failing.clear()  # the next opening needs fresh evidence (or a failed probe)
            log.warning(
                "provider %s failing (%s): circuit open for %.0fs; its deliveries wait in the store",
                self.name,
                "the probe failed" if probing else f"{self.threshold} deliveries failed transiently in a row",
                self.current_cooldown,
                extra={"event": "breaker.opened", "provider": self.name, "cooldown_s": self.current_cooldown},
            )
