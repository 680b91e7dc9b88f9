"""Frequency caps: rules from config, compiled into the checks each message must pass.

A rule counts messages delivered to a *user* on a channel (three iPhones of one user count
once for apns) over a rolling window (`90m`, `24h`, `7d`) or a calendar day or week in the
user's local time. A rule targets channels (a channel, the `push` group, or `any`), tags
and/or campaigns; every rule that matches a message applies, and all must admit it.

The stores enforce the checks exactly (`gateway.store.caps` in memory for the embedded
store, a Lua script on Redis): every rule of a message is checked and taken in one step,
all or none, and a permanent failure refunds its reservation, so it does not count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec

from gateway.config import Duration, seconds
from gateway.model.job import Job
from gateway.policy.zones import instants_of, local_day

GROUPS = {"push": frozenset({"apns", "fcm", "webpush"})}


class CapRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    limit: Annotated[int, msgspec.Meta(ge=0)]
    window: Duration | None = None  # rolling: "90m", "24h", "7d"
    calendar: Literal["day", "week"] | None = None  # or a calendar day/week, local time
    channels: list[str] = msgspec.field(default_factory=lambda: ["any"])  # channel names, "push", or "any"
    tags: list[str] = []  # any of these tags (empty: every job)
    campaigns: list[str] = []  # any of these campaigns (empty: every job)
    action: Literal["drop", "defer"] = "drop"
    include_transactional: bool = False


@dataclass(frozen=True)
class Cap:
    """A rule, compiled."""

    name: str
    limit: int
    period: float | None  # rolling window, seconds
    calendar: str | None
    channels: frozenset[str] | None  # None: any channel
    tags: frozenset[str]
    campaigns: frozenset[str]
    action: str
    include_transactional: bool

    @classmethod
    def from_rule(cls, rule: CapRule) -> Cap:
        channels: set[str] | None = set()
        for c in rule.channels:
            if c == "any":
                channels = None
                break
            assert channels is not None
            channels |= GROUPS.get(c, {c})
        return cls(
            rule.name,
            rule.limit,
            seconds(rule.window) if rule.window else None,
            rule.calendar,
            frozenset(channels) if channels is not None else None,
            frozenset(rule.tags),
            frozenset(rule.campaigns),
            rule.action,
            rule.include_transactional,
        )

    def applies(self, job: Job, channel: str) -> bool:
        if job.category == "transactional" and not self.include_transactional:
            return False
        if self.channels is not None and channel not in self.channels:
            return False
        if self.tags and not self.tags.intersection(job.tags):
            return False
        return not (self.campaigns and job.campaign not in self.campaigns)

    def bounds(self, now: float, tz: ZoneInfo) -> tuple[float, float | None]:
        """(window start, the next calendar reset or None for a rolling window)."""
        if self.period is not None:
            return now - self.period, None
        start, reset = _calendar_bounds(tz, local_day(tz, now), self.calendar == "week")
        return min(start, now), reset  # min: a day that began in a DST gap after `now`'s reading


_EPOCH = date(1970, 1, 1)


@functools.lru_cache(maxsize=65536)
def _calendar_bounds(tz: ZoneInfo, day_number: int, week: bool) -> tuple[float, float]:
    """Local midnight starting the day (or Monday), and the next one: cached per zone
    and day, since every recipient in a zone shares them."""
    day = _EPOCH + timedelta(days=day_number)
    if week:
        day -= timedelta(days=day.weekday())
    return _local_midnight(tz, day), _local_midnight(tz, day + timedelta(days=7 if week else 1))


def _local_midnight(tz: ZoneInfo, day: date) -> float:
    return instants_of(tz, datetime.combine(day, time(0, 0)))[0]


def validate_rules(rules: Sequence[CapRule]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        where = f"caps[{i}]"
        if (rule.window is None) == (rule.calendar is None):
            problems.append(f"{where}: give exactly one of `window` or `calendar`")
        if rule.name in seen:
            problems.append(f"{where}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
    return problems
