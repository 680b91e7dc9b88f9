"""Prometheus text exposition, with the handful of metric types the gateway needs.

Kept in-house (about 80 lines) rather than pulling prometheus_client: updates are plain
dict increments on the event loop, one per batch where possible.
"""

from __future__ import annotations

import bisect
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

    def __init__(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], dict[tuple[str, ...], float]]):
        self.name, self.help, self.labels, self.read = name, help, labels, read

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.read().items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {value:g}")
        return lines


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
        self.queue_depth = Gauge("gateway_queue_depth", "Recipients accepted and not yet decided.", queue_depth)
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

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.jobs_accepted,
            self.recipients_accepted,
            self.jobs_rejected,
            self.decisions,
            self.provider_errors,
            self.queue_depth,
            self.template_cache,
            self.delivery_latency,
        ):
            lines += metric.render()
        return "\n".join(lines) + "\n"
