"""Delivery policy for one recipient on one channel at one instant.

In order: the channel exists; the job has not expired; marketing needs the channel group's
subscription; a usable device or address; `deliver_at_local`; quiet hours in the
recipient's zone. What passes all of them goes to the caps, which the pipeline reserves
for a whole batch at once (`caps_request`). A deferral that would land after
`expires_at` is `suppressed: expired` instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from gateway.channel import Channel
from gateway.config import ConfigError, GatewayConfig, QuietHoursConfig, convert_section, seconds
from gateway.model import decision as d
from gateway.model.address import opt_out_key, tenant_key
from gateway.model.caps import CapRequest, Check, Denied
from gateway.model.job import Device, Job, Recipient
from gateway.policy.caps import GROUPS, Cap, CapRule, validate_rules
from gateway.policy.quiet import Window, spread_offset
from gateway.policy.zones import TIMEZONE_FALLBACK, minutes_of_day, next_wall_time, parse_hhmm, resolve, zone

SUBSCRIBED = frozenset({"opted_in", "subscribed"})


@dataclass(slots=True)
class Screening:
    """Passed the per-message checks: may be sent now, subject to the caps."""

    destinations: list[Device | str]
    tz: ZoneInfo
    flags: list[str] | None = None  # e.g. ["timezone_fallback"]


@dataclass(slots=True)
class Verdict:
    """Will not be sent now, and why (deferred ones carry their release time)."""

    outcome: d.Outcome
    reason: str
    detail: str | None = None
    until: float | None = None
    flags: list[str] | None = None


@dataclass(slots=True)
class _JobRules:
    """What the checks need from a job, worked out once per job rather than per message."""

    expires: float | None
    marketing: bool
    deliver_at: time | None
    quiet_action: str
    quiet_channels: frozenset[str]  # the job's channels quiet hours apply to
    # The job's channel list identifies the job in the cache: holding it (a few names, not
    # the job with its recipients) keeps its id from being reused by another job's list.
    channels: list[str]
    # What decides which cap rules apply to the job (with the channel): the key of its checks.
    caps_key: tuple[str, frozenset[str], str]


class Policy:
    def __init__(self, quiet: QuietHoursConfig, caps: Sequence[CapRule]):
        self.quiet = quiet
        # Addresses that used one-click unsubscribe, by `opt_out_key` (the address as SMTP
        # reads it, lower case); the gateway keeps it in step with the store.
        self.opt_outs: set[str] = set()
        fallback = zone(quiet.fallback_timezone)
        assert fallback is not None, "checked by load_policy"
        self.fallback = fallback
        self.window = Window(parse_hhmm(quiet.start), parse_hhmm(quiet.end))
        self.quiet_channels = _expand(quiet.channels)
        self.spread = seconds(quiet.spread)
        self.caps = [Cap.from_rule(rule) for rule in caps]
        self._checks_cache: dict[tuple[tuple[str, frozenset[str], str], str, ZoneInfo], list[Check]] = {}
        self._checks_at = 0.0
        self._job_rules: dict[int, _JobRules] = {}
        self.longest_window = max([c.period or 8 * 86400 for c in self.caps], default=0.0)

    def _rules(self, job: Job) -> _JobRules:
        rules = self._job_rules.get(id(job.channels))
        if rules is None:
            action = job.quiet_hours or self.quiet.action
            applies = (
                self.quiet.enabled and action != "ignore" and (job.category == "marketing" or self.quiet.transactional)
            )
            rules = _JobRules(
                _timestamp(job.expires_at),
                job.category == "marketing",
                parse_hhmm(job.deliver_at_local) if job.deliver_at_local is not None else None,
                action,
                frozenset(c for c in job.channels if c in self.quiet_channels) if applies else frozenset(),
                job.channels,
                (job.category, frozenset(job.tags), job.campaign),
            )
            # Not the job itself: a finished job must not stay in memory for its rules' sake
            # (holding jobs here once kept hundreds of them, and their recipients, alive).
            if len(self._job_rules) >= 256:
                self._job_rules.clear()
            self._job_rules[id(job.channels)] = rules
        return rules

    def check(
        self,
        job: Job,
        recipient: Recipient,
        channel: Channel | None,
        name: str,
        now: float,
        released: bool = False,
        tenant: str = "default",
    ) -> Screening | Verdict:
        """`released`: a deferred message coming due; its deliver_at_local has passed.
        `tenant`: whose job (opt-outs are per tenant)."""
        if channel is None:
            return Verdict("suppressed", d.CHANNEL_UNAVAILABLE)
        rules = self._rules(job)
        tz, fell_back = resolve(recipient.timezone, self.fallback)
        flags = [TIMEZONE_FALLBACK] if fell_back else None
        expires = rules.expires
        if expires is not None and expires <= now:
            return Verdict("suppressed", d.EXPIRED, f"expired at {_iso(expires)}", flags=flags)
        if rules.marketing:
            state = recipient.subscriptions.get(channel.subscription_group)
            if state not in SUBSCRIBED:
                return Verdict(
                    "suppressed", d.UNSUBSCRIBED if state == "unsubscribed" else d.NOT_SUBSCRIBED, flags=flags
                )
            if (
                self.opt_outs
                and channel.subscription_group == "email"
                and recipient.email
                and tenant_key(tenant, opt_out_key(recipient.email)) in self.opt_outs
            ):
                return Verdict(
                    "suppressed",
                    d.OPTED_OUT,
                    flags=flags,
                    detail="one-click unsubscribe; upstream clears it with DELETE /v1/opt-outs/{address}",
                )
        destinations = channel.destinations(recipient)
        if not destinations:
            return Verdict("suppressed", d.NO_DEVICE, flags=flags)
        if rules.deliver_at is not None and not released and not _in_minute(tz, now, rules.deliver_at):
            at = next_wall_time(tz, now, rules.deliver_at)
            if at > now:
                return _defer(at, d.DELIVER_AT_LOCAL, f"{job.deliver_at_local} in {tz.key}", expires, flags)
        if name in rules.quiet_channels:
            release = self.window.release(tz, now)
            if release is not None:
                window = f"{self.quiet.start}-{self.quiet.end} {tz.key}"
                if rules.quiet_action == "drop":
                    return Verdict("suppressed", d.QUIET_HOURS, window, flags=flags)
                release += spread_offset(f"{recipient.user_id}/{job.campaign}", self.spread)
                return _defer(release, d.QUIET_HOURS, window, expires, flags)
        return Screening(destinations, tz, flags)

    def caps_request(
        self, job: Job, recipient: Recipient, name: str, tz: ZoneInfo, now: float, tenant: str = "default"
    ) -> CapRequest:
        # A batch shares one `now`, so a message's checks depend only on what the rules look
        # at (the job's category, tags and campaign), the channel and the zone: built once
        # per batch and shared, not once per message. (Keyed by the job's id, a job whose id
        # was a finished job's got that job's checks when the clock stood still: found by the
        # preview-truth fuzzer.)
        if now != self._checks_at:
            self._checks_cache.clear()
            self._checks_at = now
        key = (self._rules(job).caps_key, name, tz)
        checks = self._checks_cache.get(key)
        if checks is None:
            checks = []
            for cap in self.caps:
                if cap.applies(job, name):
                    since, reset = cap.bounds(now, tz)
                    checks.append(Check(cap.name, since, cap.limit, cap.period, reset, cap.action))
            self._checks_cache[key] = checks
        return CapRequest(tenant_key(tenant, recipient.user_id), checks)  # caps count per tenant


def _expand(channels: Sequence[str]) -> frozenset[str] | _Any:
    if "any" in channels:
        return _Any()
    out: set[str] = set()
    for c in channels:
        out |= GROUPS.get(c, {c})
    return frozenset(out)


class _Any:
    def __contains__(self, item: object) -> bool:
        return True


def _in_minute(tz: ZoneInfo, now: float, at: time) -> bool:
    """Is it `at` on the recipient's wall clock now? (A job posted at 09:00:20 for 09:00
    goes now, not tomorrow.)"""
    return minutes_of_day(tz, now) == at.hour * 60 + at.minute


def _defer(until: float, reason: str, detail: str, expires: float | None, flags: list[str] | None) -> Verdict:
    if expires is not None and until > expires:
        return Verdict(
            "suppressed",
            d.EXPIRED,
            f"{reason} would hold it until {_iso(until)}, after expires_at {_iso(expires)}",
            flags=flags,
        )
    return Verdict("deferred", reason, detail, until, flags)


@functools.lru_cache(maxsize=1024)
def _timestamp(instant: datetime | None) -> float | None:
    return instant.timestamp() if instant is not None else None


@functools.lru_cache(maxsize=4096)
def _iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


def load_policy(config: GatewayConfig) -> Policy:
    """The Policy for a config, or ConfigError naming every bad key."""
    problems: list[str] = []
    rules: list[CapRule] = []
    for i, raw in enumerate(config.caps):
        try:
            rules.append(convert_section(raw, CapRule, f"caps[{i}]"))
        except ConfigError as exc:
            problems += exc.problems
    problems += validate_rules(rules)
    if zone(config.quiet_hours.fallback_timezone) is None:
        problems.append(
            f"quiet_hours.fallback_timezone: not an IANA time zone: {config.quiet_hours.fallback_timezone!r}"
        )
    if problems:
        raise ConfigError(problems)
    return Policy(config.quiet_hours, rules)


def defaults() -> Policy:
    return load_policy(GatewayConfig())


def cap_verdict(denied: Denied, expires: float | None, flags: list[str] | None) -> Verdict:
    """Capped, or deferred to when a slot frees: only if one ever does (a rule with limit 0
    frees none) and before the job expires. Every deferral ends."""
    if denied.action != "defer":
        return Verdict("capped", denied.rule, flags=flags)
    if denied.free_at == float("inf"):
        return Verdict("capped", denied.rule, "the rule allows none: no slot will free", flags=flags)
    if expires is not None and denied.free_at > expires:
        return Verdict("capped", denied.rule, "no slot frees before expires_at", flags=flags)
    return Verdict("deferred", d.FREQUENCY_CAP, denied.rule, denied.free_at, flags)
