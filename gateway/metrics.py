"""Prometheus text exposition, with the handful of metric types the gateway needs.

Kept in-house (about 80 lines) rather than pulling prometheus_client: updates are plain
dict increments on the event loop, one per batch where possible.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    body = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *labels: str, by: float = 1) -> None:
        self.values[labels] += by

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        values = self.values if (self.values or self.labels) else {(): 0.0}  # expose 0, not nothing
        lines += [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in sorted(values.items())]
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class ReadCounter:
    """A counter kept elsewhere (a lower layer that cannot import this one), read when
    rendered: label values -> count."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], dict[tuple[str, ...], float]]):
        self.name, self.help, self.labels, self.read = name, help, labels, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self.read().items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {value:g}")
        return lines


class LabelledGauge(ReadCounter):
    """A gauge with labels, read when rendered: label values -> value."""

    kind = "gauge"


class History:
    """Deliveries sent and their summed latency per channel and minute, for the last hour
    (the console's charts; Prometheus has the histogram)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, minutes: int = 60):
        self.clock, self.minutes = clock, minutes
        self.buckets: dict[str, dict[int, list[float]]] = defaultdict(dict)

    def add(self, channel: str, sent: int, latency_sum: float) -> None:
        minute = int(self.clock() // 60)
        bucket = self.buckets[channel].get(minute)
        if bucket is None:
            bucket = self.buckets[channel][minute] = [0, 0.0]
            for old in [m for m in self.buckets[channel] if m <= minute - self.minutes]:
                del self.buckets[channel][old]
        bucket[0] += sent
        bucket[1] += latency_sum

    def series(self) -> dict[str, list[dict[str, float]]]:
        """Per channel, the last hour oldest first: {minutes_ago, per_second, latency_ms}."""
        now = int(self.clock() // 60)
        out = {}
        for channel, buckets in self.buckets.items():
            points = []
            for ago in range(self.minutes - 1, -1, -1):
                sent, total = buckets.get(now - ago, (0, 0.0))
                points.append(
                    {"minutes_ago": ago, "per_second": sent / 60, "latency_ms": 1000 * total / sent if sent else 0.0}
                )
            out[channel] = points
        return out


class Histogram:
    def __init__(self, name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.help, self.labels, self.buckets = name, help, labels, buckets
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, value: float, *labels: str, times: int = 1) -> None:
        """Record `value` (`times` observations of it: a batch's deliveries share one)."""
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += times
        self.sums[labels] += value * times

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels((*self.labels, 'le'), (*key, le))} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {running}")
        return lines


class Metrics:
    def __init__(
        self,
        queue_depth: Callable[[], float] = lambda: 0,
        template_cache: Callable[[], dict[tuple[str, ...], float]] = dict,
        jobs_queued: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
        breakers: Callable[[], dict[tuple[str, ...], float]] = dict,
    ):
        self.jobs_accepted = Counter("gateway_jobs_accepted_total", "Send jobs accepted (202).")
        self.recipients_accepted = Counter("gateway_recipients_accepted_total", "Recipients in accepted jobs.")
        self.jobs_rejected = Counter("gateway_jobs_rejected_total", "Send jobs refused, by HTTP status.", ("status",))
        self.decisions = Counter(
            "gateway_decisions_total", "Decisions recorded, by channel and outcome.", ("channel", "outcome")
        )
        self.provider_errors = Counter(
            "gateway_provider_errors_total", "Failed delivery attempts, by channel and reason.", ("channel", "reason")
        )
        self.retries = Counter(
            "gateway_delivery_retries_total", "Deliveries attempted again after a transient failure.", ("channel",)
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth", "Recipients accepted by this process and not yet decided.", queue_depth
        )
        self.jobs_queued = Gauge(
            "gateway_jobs_queued", "Jobs accepted and waiting for a worker in this process.", lambda: jobs_queued()[0]
        )
        self.queue_age = Gauge(
            "gateway_queue_oldest_age_seconds",
            "How long the oldest job waiting for a worker has waited.",
            lambda: jobs_queued()[1],
        )
        # Read from the store by the /metrics handler before rendering (an async read).
        self.deferred_by_reason: dict[tuple[str, ...], float] = {}
        self.deferred = LabelledGauge(
            "gateway_deferred_messages",
            "Messages held back in the store, by reason (quiet_hours, frequency_cap, retrying, ...).",
            ("reason",),
            lambda: self.deferred_by_reason,
        )
        self.breaker_open = LabelledGauge(
            "gateway_breaker_open",
            "1 while a provider's circuit breaker is open (its deliveries wait in the store), else 0.",
            ("channel", "provider"),
            breakers,
        )
        self.template_cache = ReadCounter(
            "gateway_template_cache_lookups_total",
            "Templates and conditions looked up in the compiled-template cache, by result (hit, miss).",
            ("result",),
            template_cache,
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "From job acceptance to the provider's answer, per sent delivery.",
            ("channel",),
            LATENCY_BUCKETS,
        )
        self.history = History()
        self.callbacks_delivered = Counter(
            "gateway_callbacks_delivered_total", "Status callbacks the tenant's endpoint took (2xx).", ("tenant",)
        )
        self.callback_failures = Counter(
            "gateway_callback_failures_total", "Status callback attempts that failed (retried).", ("tenant",)
        )
        self.callbacks_dropped = Counter(
            "gateway_callbacks_dropped_total", "Status callbacks given up after callbacks.max_age.", ("tenant",)
        )
        self.callback_lag: dict[tuple[str, ...], float] = {}
        self.callback_lag_gauge = LabelledGauge(
            "gateway_callback_lag_seconds",
            "Age of the oldest status callback not yet delivered, per tenant (0: none waiting).",
            ("tenant",),
            lambda: self.callback_lag,
        )

    def all(self) -> list[Counter | Gauge | LabelledGauge | ReadCounter | Histogram]:
        return [
            self.jobs_accepted,
            self.recipients_accepted,
            self.jobs_rejected,
            self.decisions,
            self.provider_errors,
            self.retries,
            self.queue_depth,
            self.jobs_queued,
            self.queue_age,
            self.deferred,
            self.breaker_open,
            self.template_cache,
            self.delivery_latency,
            self.callbacks_delivered,
            self.callback_failures,
            self.callbacks_dropped,
            self.callback_lag_gauge,
        ]

    def names(self) -> set[str]:
        """Every series name this gateway exports (histograms with their suffixes)."""
        found = set()
        for metric in self.all():
            found.add(metric.name)
            if isinstance(metric, Histogram):
                found |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        return found

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines += metric.render()
        return "\n".join(lines) + "\n"
