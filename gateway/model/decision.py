"""The decision: what happened to one recipient on one channel, and why.

Every recipient ends with one decision per channel of its job. Reasons are short stable
codes that upstream can switch on; `detail` carries the human part (a provider message,
the missing template path).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.model.instant import rfc3339

Outcome = Literal["sent", "deferred", "suppressed", "capped", "failed", "invalid_token"]
OUTCOMES: tuple[str, ...] = ("sent", "deferred", "suppressed", "capped", "failed", "invalid_token")


class Earlier(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A state a decision had before its latest one (deferred, then released)."""

    outcome: Outcome
    reason: str | None = None
    detail: str | None = None
    until: float | None = None
    at: float = 0.0


class Decision(msgspec.Struct, kw_only=True, omit_defaults=True):
    recipient: int
    user_id: str
    channel: str
    outcome: Outcome
    reason: str | None = None
    detail: str | None = None
    variant: str | None = None
    until: float | None = None  # deferred: epoch seconds of release
    at: float = 0.0
    # Dead tokens/subscriptions this decision reports, so upstream can delete them.
    invalid_tokens: list[str] | None = None
    # Facts about how it was decided, e.g. "timezone_fallback".
    flags: list[str] | None = None
    # What it was before, oldest first: a message deferred and then sent keeps its deferral.
    history: list[Earlier] | None = None


def decision_json(d: Decision) -> dict[str, object]:
    """A decision as the API and the status callbacks show it: times in RFC 3339. (Built by
    hand: a callback carries every decision of a batch, and this is 4x faster than
    converting the Struct and patching the times.)"""
    view = _state({"recipient": d.recipient, "user_id": d.user_id, "channel": d.channel, "outcome": d.outcome}, d)
    if d.variant is not None:
        view["variant"] = d.variant
    if d.invalid_tokens is not None:
        view["invalid_tokens"] = d.invalid_tokens
    if d.flags is not None:
        view["flags"] = d.flags
    if d.history is not None:
        view["history"] = [_state({"outcome": e.outcome}, e) for e in d.history]
    return view


def _state(view: dict[str, object], d: Decision | Earlier) -> dict[str, object]:
    """What a decision and each of its earlier states have: reason, detail and times."""
    if d.reason is not None:
        view["reason"] = d.reason
    if d.detail is not None:
        view["detail"] = d.detail
    if d.until is not None:
        view["until"] = rfc3339(d.until)
    if d.at:
        view["at"] = rfc3339(d.at)
    return view


# Reasons the core itself gives (channels add provider reasons of their own).
CHANNEL_UNAVAILABLE = "channel_unavailable"
CANCELLED = "cancelled"  # suppressed: upstream cancelled the job before this message went
NO_DEVICE = "no_device"
MISSING_DATA = "missing_data"
EXPIRED = "expired"
UNSUBSCRIBED = "unsubscribed"
NOT_SUBSCRIBED = "not_subscribed"  # marketing, and no subscription state given for the group
NO_CONTENT = "no_content"
NOT_NEEDED = "fallback_not_needed"  # routing "first": an earlier channel succeeded (or is deferred)
RETRIES_EXHAUSTED = "retries_exhausted"
RENDER_ERROR = "render_error"
RENDER_LIMIT = "render_limit"  # failed: a template passed a render limit for this recipient
PAYLOAD_TOO_LARGE = "payload_too_large"
OPTED_OUT = "opted_out"  # one-click unsubscribe recorded for the address
QUIET_HOURS = "quiet_hours"
DELIVER_AT_LOCAL = "deliver_at_local"
FREQUENCY_CAP = "frequency_cap"  # deferred by a cap rule with action = "defer"
PROVIDER_UNAVAILABLE = "provider_unavailable"  # deferred: the provider's circuit is open
RETRYING = "retrying"  # deferred: failed transiently, tried again when due (until max_delivery_time)
PROVIDER_BUSY = "provider_busy"  # deferred: its channel's in-flight budget is full while others go on
INVALID_REQUEST = "invalid_request"  # the request for this delivery could not be built (our side)
CHANNEL_ERROR = "channel_error"  # the channel plugin raised for the whole batch (a plugin bug)
INTERNAL_ERROR = "internal_error"  # the gateway could not plan this recipient (a bug; logged)
