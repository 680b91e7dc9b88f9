"""Frequency caps: rules from config, and the ledger that enforces them exactly.

A rule counts messages delivered to a *user* on a channel (three iPhones of one user count
once for apns) over a rolling window (`90m`, `24h`, `7d`) or a calendar day or week in the
user's local time. A rule targets channels (a channel, the `push` group, or `any`), tags
and/or campaigns; every rule that matches a message applies, and all must admit it.

The ledger keeps, per (rule, user), the instants of admitted sends. `reserve` checks every
rule of a request and records it in all of them or in none, in one step with no await in
between, so concurrent jobs cannot both take the last slot. A permanent failure refunds
its reservation, so it does not count.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec

from gateway.config import Duration, seconds
from gateway.intake.model import Job
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


# Reservation ids: unique across processes and restarts, far cheaper than uuid4 per send.
_ID_PREFIX = secrets.token_hex(6)
_ids = itertools.count()


def new_reservation_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"


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


@dataclass(slots=True)
class Check:
    """One rule to satisfy for one message."""

    rule: str
    since: float  # window start
    limit: int
    period: float | None
    reset: float | None  # calendar: when the window restarts
    action: str


@dataclass(slots=True)
class CapRequest:
    user: str
    checks: list[Check]


@dataclass(slots=True)
class Granted:
    reservation: str | None  # None when no rule applied


@dataclass(slots=True)
class Denied:
    rule: str
    action: str  # drop | defer
    free_at: float  # when a slot frees


CapOutcome = Granted | Denied
_NO_RULES = Granted(None)


@dataclass
class CapLedger:
    """Per (rule, user): sorted instants of admitted sends, with their reservation ids."""

    logs: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)
    where: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # reservation -> its logs

    def reserve(
        self, requests: Sequence[CapRequest], now: float
    ) -> tuple[list[CapOutcome], list[tuple[str, str, str, float]]]:
        """Outcomes, and the ledger rows added: (id, rule, user, at)."""
        outcomes: list[CapOutcome] = []
        added: list[tuple[str, str, str, float]] = []
        check_one = self._check
        for request in requests:
            checks = request.checks
            if not checks:
                outcomes.append(_NO_RULES)
                continue
            user = request.user
            denied: Denied | None = None
            for check in checks:
                found = check_one(user, check)
                # The strictest decides: a dropping rule over a deferring one, then the
                # latest time a slot frees.
                if found is not None and (
                    denied is None
                    or (found.action == "drop", found.free_at) > (denied.action == "drop", denied.free_at)
                ):
                    denied = found
            if denied is not None:
                outcomes.append(denied)
                continue
            reservation = new_reservation_id()
            for check in checks:
                self._add(check.rule, user, now, reservation)
                added.append((reservation, check.rule, user, now))
            outcomes.append(Granted(reservation))
        return outcomes, added

    def _check(self, user: str, check: Check) -> Denied | None:
        log = self.logs.get((check.rule, user), [])
        # A rolling window is (now - period, now]: a send exactly one period ago has left
        # it. A calendar window includes its first instant (local midnight).
        first = _after(log, check.since) if check.period is not None else bisect.bisect_left(log, (check.since, ""))
        count = len(log) - first
        if count < check.limit:
            return None
        if check.reset is not None:
            free_at = check.reset
        elif check.limit == 0:
            free_at = float("inf")
        else:
            # The slot frees when enough of the oldest entries leave the rolling window.
            free_at = log[first + count - check.limit][0] + (check.period or 0)
        return Denied(check.rule, check.action, free_at)

    def _add(self, rule: str, user: str, at: float, reservation: str) -> None:
        bisect.insort(self.logs.setdefault((rule, user), []), (at, reservation))
        self.where.setdefault(reservation, []).append((rule, user))

    def refund(self, reservations: Iterable[str]) -> None:
        for reservation in reservations:
            for key in self.where.pop(reservation, ()):
                log = self.logs.get(key)
                if log is not None:
                    log[:] = [(at, r) for at, r in log if r != reservation]

    def load(self, rows: Iterable[tuple[str, str, str, float]]) -> None:
        for reservation, rule, user, at in rows:
            self._add(rule, user, at, reservation)

    def prune(self, before: float) -> None:
        """Forget sends older than any window can reach."""
        for key in list(self.logs):
            log = self.logs[key]
            cut = bisect.bisect_left(log, (before, ""))
            for _, reservation in log[:cut]:
                self.where.pop(reservation, None)
            if cut < len(log):
                self.logs[key] = log[cut:]
            else:
                del self.logs[key]

    def count(self, rule: str, user: str, since: float) -> int:
        """Sends after `since` (a rolling window's count)."""
        log = self.logs.get((rule, user), [])
        return len(log) - _after(log, since)


def _after(log: list[tuple[float, str]], since: float) -> int:
    """Index of the first entry later than `since` (reservation ids are hex, below "~")."""
    return bisect.bisect_right(log, (since, "~"))
