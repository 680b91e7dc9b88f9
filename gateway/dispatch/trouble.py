"""Provider trouble, summarised: one log line per provider and interval, never one per
message. A provider that fails 10,000 deliveries in a minute leaves one line naming the
reasons and counts; a healthy one leaves none."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from gateway.model.delivery import Result

log = logging.getLogger("gateway.providers")
_KINDS = {"TransientFailure": "transient", "PermanentFailure": "permanent", "InvalidToken": "invalid_token"}


class Trouble:
    def __init__(self) -> None:
        self.failed: defaultdict[str, Counter[tuple[str, str]]] = defaultdict(Counter)

    def failure(self, provider: str, result: Result) -> None:
        """An attempt that did not end in `Sent` (a transient one may be retried)."""
        self.failed[provider][(_KINDS.get(type(result).__name__, "other"), getattr(result, "reason", "?"))] += 1

    def flush(self, interval: float) -> int:
        """Log one line per provider that failed since the last flush; how many lines."""
        lines = 0
        for provider, failures in sorted(self.failed.items()):
            by_kind: defaultdict[str, dict[str, int]] = defaultdict(dict)
            for (kind, reason), count in failures.most_common():
                by_kind[kind][reason] = count
            parts = [
                f"{sum(reasons.values())} {kind} ({', '.join(f'{r} {n}' for r, n in list(reasons.items())[:5])})"
                for kind, reasons in by_kind.items()
            ]
            total = sum(failures.values())
            log.warning(
                "provider %s, last %.0fs: %s",
                provider,
                interval,
                "; ".join(parts),
                extra={
                    "event": "provider.trouble",
                    "provider": provider,
                    "interval_s": interval,
                    "failures": total,
                    "by_reason": {f"{k}:{r}": n for (k, r), n in failures.items()},
                },
            )
            lines += 1
        self.failed.clear()
        return lines
