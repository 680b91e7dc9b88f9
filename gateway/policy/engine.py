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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway import decision as d
from gateway.channel import Channel
from gateway.config import ConfigError, GatewayConfig, QuietHoursConfig, convert_section, seconds
from gateway.intake.model import Device, Job, Recipient
from gateway.policy.caps import GROUPS, Cap, CapRequest, CapRule, Check, validate_rules
from gateway.policy.quiet import Window, spread_offset
from gateway.policy.zones import TIMEZONE_FALLBACK, next_wall_time, parse_hhmm, resolve, zone

SUBSCRIBED = frozenset({"opted_in", "subscribed"})
QUIET_HOURS = "quiet_hours"
DELIVER_AT_LOCAL = "deliver_at_local"
FREQUENCY_CAP = "frequency_cap"
OPTED_OUT = "opted_out"


@dataclass(slots=True)
class Screening:
    """The outcome of the per-message checks: destinations to send to now, or why not."""

    destinations: list[Device | str] = field(default_factory=list)
    outcome: d.Outcome | None = None  # None: may be sent now (subject to caps)
    reason: str | None = None
    detail: str | None = None
    until: float | None = None  # deferred: release instant
    flags: list[str] | None = None  # e.g. ["timezone_fallback"]
    tz: ZoneInfo | None = None


class Policy:
    def __init__(self, quiet: QuietHoursConfig, caps: Sequence[CapRule]):
        self.quiet = quiet
        # Addresses that used one-click unsubscribe (lower case); the gateway keeps it
        # in step with the store.
        self.opt_outs: set[str] = set()
        fallback = zone(quiet.fallback_timezone)
        assert fallback is not None, "checked by load_policy"
        self.fallback = fallback
        self.window = Window(parse_hhmm(quiet.start), parse_hhmm(quiet.end))
        self.quiet_channels = _expand(quiet.channels)
        self.spread = seconds(quiet.spread)
        self.caps = [Cap.from_rule(rule) for rule in caps]
        self._checks_cache: dict[tuple[int, str, ZoneInfo], list[Check]] = {}
        self._checks_at = 0.0
        self.longest_window = max([c.period or 8 * 86400 for c in self.caps], default=0.0)

    def check(self, job: Job, recipient: Recipient, channel: Channel | None, name: str, now: float,
              released: bool = False) -> Screening:
        """`released`: a deferred message coming due; its deliver_at_local has passed."""
        if channel is None:
            return Screening(outcome="suppressed", reason=d.CHANNEL_UNAVAILABLE)
        tz, fell_back = resolve(recipient.timezone, self.fallback)
        flags = [TIMEZONE_FALLBACK] if fell_back else None
        expires = _timestamp(job.expires_at)
        if expires is not None and expires <= now:
            return Screening(outcome="suppressed", reason=d.EXPIRED, detail=f"expired at {_iso(expires)}", flags=flags)
        if job.category == "marketing":
            state = recipient.subscriptions.get(channel.subscription_group)
            if state not in SUBSCRIBED:
                reason = d.UNSUBSCRIBED if state == "unsubscribed" else d.NOT_SUBSCRIBED
                return Screening(outcome="suppressed", reason=reason, flags=flags)
            if self.opt_outs and channel.subscription_group == "email" and recipient.email \
                    and recipient.email.lower() in self.opt_outs:
                return Screening(outcome="suppressed", reason=OPTED_OUT, flags=flags,
                                 detail="one-click unsubscribe; upstream clears it with DELETE /v1/opt-outs/{address}")
        destinations = channel.destinations(recipient)
        if not destinations:
            return Screening(outcome="suppressed", reason=d.NO_DEVICE, flags=flags)
        result = Screening(destinations=destinations, flags=flags, tz=tz)
        if job.deliver_at_local is not None and not released:
            at = next_wall_time(tz, now, parse_hhmm(job.deliver_at_local))
            if at > now:
                return self._defer(result, at, DELIVER_AT_LOCAL, f"{job.deliver_at_local} in {tz.key}", expires)
        action = job.quiet_hours or self.quiet.action
        applies = (self.quiet.enabled and action != "ignore" and name in self.quiet_channels
                   and (job.category == "marketing" or self.quiet.transactional))
        if applies:
            release = self.window.release(tz, now)
            if release is not None:
                window = f"{self.quiet.start}-{self.quiet.end} {tz.key}"
                if action == "drop":
                    result.outcome, result.reason, result.detail = "suppressed", QUIET_HOURS, window
                    return result
                release += spread_offset(f"{recipient.user_id}/{job.campaign}", self.spread)
                return self._defer(result, release, QUIET_HOURS, window, expires)
        return result

    def _defer(self, result: Screening, until: float, reason: str, detail: str, expires: float | None) -> Screening:
        if expires is not None and until > expires:
            result.outcome, result.reason = "suppressed", d.EXPIRED
            result.detail = f"{reason} would hold it until {_iso(until)}, after expires_at {_iso(expires)}"
            return result
        result.outcome, result.reason, result.detail, result.until = "deferred", reason, detail, until
        return result

    def caps_request(self, job: Job, recipient: Recipient, name: str, tz: ZoneInfo, now: float) -> CapRequest:
        # A batch shares one `now`, so a message's checks depend only on (job, channel,
        # zone): built once per batch and shared, not once per message.
        if now != self._checks_at:
            self._checks_cache.clear()
            self._checks_at = now
        key = (id(job), name, tz)
        checks = self._checks_cache.get(key)
        if checks is None:
            checks = []
            for cap in self.caps:
                if cap.applies(job, name):
                    since, reset = cap.bounds(now, tz)
                    checks.append(Check(cap.name, since, cap.limit, cap.period, reset, cap.action))
            self._checks_cache[key] = checks
        return CapRequest(recipient.user_id, checks)


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
        problems.append(f"quiet_hours.fallback_timezone: not an IANA time zone: "
                        f"{config.quiet_hours.fallback_timezone!r}")
    if problems:
        raise ConfigError(problems)
    return Policy(config.quiet_hours, rules)


def defaults() -> Policy:
    return load_policy(GatewayConfig())
