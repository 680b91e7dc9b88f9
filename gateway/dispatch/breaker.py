"""A circuit breaker per provider.

A provider that keeps failing transiently (timeouts, 5xx, refused connections) is opened:
for a cooldown its deliveries are not attempted but *deferred* in the store (reason
`provider_unavailable`), so the other providers' batches are not held up by its timeouts.
After the cooldown one batch probes it: a success closes the breaker, a failure opens it
again for a longer cooldown (doubling, capped). Per-token failures (invalid tokens,
payloads refused) are not the provider failing and do not count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Breaker:
    name: str
    threshold: int  # consecutive transient failures that open it
    cooldown: float  # seconds, the first time
    max_cooldown: float = 600.0
    failures: int = 0
    open_until: float | None = None
    current_cooldown: float = 0.0

    def allows(self, now: float) -> bool:
        """Closed, or open with its cooldown over (one probe batch goes through)."""
        return self.open_until is None or now >= self.open_until

    def retry_at(self) -> float:
        assert self.open_until is not None
        return self.open_until

    def record(self, sent: int, transient: int, now: float) -> None:
        """One attempt's tally: any success closes it; transient failures add up."""
        if sent:
            if self.open_until is not None:
                log.info("provider %s recovered: circuit closed", self.name)
            self.failures, self.open_until, self.current_cooldown = 0, None, 0.0
            return
        if not transient:
            return
        self.failures += transient
        probing = self.open_until is not None and now >= self.open_until
        if probing or self.failures >= self.threshold:
            self.current_cooldown = min(self.max_cooldown, self.current_cooldown * 2 or self.cooldown)
            self.open_until = now + self.current_cooldown
            log.warning(
                "provider %s failing (%d transient failures): circuit open for %.0fs; its deliveries wait in the store",
                self.name,
                self.failures,
                self.current_cooldown,
            )
