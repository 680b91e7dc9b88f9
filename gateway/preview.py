"""Preview: what a job would do to each recipient, without sending anything.

For every recipient: the chosen variant, why each earlier variant was skipped, the
rendered content per channel, and the decision each channel would get now (or at a
fixed `now`), as a send would make it, assuming the providers accept every delivery:
policy, frequency caps checked read-only against the store (each message counting
against the next, as a send's reservations would), and routing `first` walked as a
send walks it. Nothing is sent and nothing is stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from gateway.channel import Channel
from gateway.intake.validate import AcceptedJob, instant_problem
from gateway.model import decision as d
from gateway.model.caps import CapOutcome, CapRequest, Denied
from gateway.model.instant import rfc3339
from gateway.model.job import Job
from gateway.personalize.render import Personalizer
from gateway.pipeline.plan import Ready, RecipientPlan, plan_recipient
from gateway.pipeline.stages import YIELD_EVERY
from gateway.policy.engine import Policy, Verdict, cap_verdict

# The store's read-only caps check (`Store.check_caps`).
CheckCaps = Callable[[Sequence[CapRequest], float], Awaitable[list[CapOutcome]]]
Step = Ready | Verdict

WOULD_SEND = "would_send"


class SkippedVariant(msgspec.Struct, omit_defaults=True):
    variant: str
    reason: str
    path: str | None = None
    detail: str | None = None


class ChannelPreview(msgspec.Struct, omit_defaults=True):
    channel: str
    outcome: str  # would_send, or the decision outcome it would get
    reason: str | None = None
    detail: str | None = None
    until: str | None = None  # deferred: when it would be released
    flags: list[str] | None = None
    destinations: int = 0
    content: dict[str, Any] | None = None


class RecipientPreview(msgspec.Struct, omit_defaults=True):
    recipient: int
    user_id: str
    variant: str | None
    skipped: list[SkippedVariant]
    channels: list[ChannelPreview]


class Preview(msgspec.Struct):
    campaign: str
    now: str
    warnings: list[str]
    recipients: list[RecipientPreview]


async def preview(
    accepted: AcceptedJob,
    channels: dict[str, Channel],
    policy: Policy,
    now: float,
    check_caps: CheckCaps | None = None,
    tenant: str = "default",
    batch_size: int | None = None,
) -> Preview:
    """`check_caps`: the store's read-only check; without one, caps are not evaluated (a
    warning says so). `tenant`: whose opt-outs and caps apply. `batch_size`: the pipeline's
    (routing `first` walks each batch down the ladder in turn, as the send does)."""
    job = accepted.job
    personalizer = Personalizer(job, accepted.variants, {n: c.content_kind for n, c in channels.items()})
    plans = []
    slice_ends = time.perf_counter() + YIELD_EVERY
    for i, recipient in enumerate(job.recipients):
        if time.perf_counter() > slice_ends:  # costly templates must not stall the API
            await asyncio.sleep(0)
            slice_ends = time.perf_counter() + YIELD_EVERY
        plan = plan_recipient(job, personalizer, channels, policy, recipient, now, always_choose=True, tenant=tenant)
        _refuse_over_limit(job, i, plan)
        plans.append(plan)
    steps: dict[tuple[int, str], Step] = {
        (i, name): step for i, plan in enumerate(plans) for name, step in plan.channels.items()
    }
    caps = _Caps(job, policy, steps, now, check_caps, tenant)
    if job.routing == "first":
        n = len(job.recipients)
        size = batch_size or max(n, 1)
        for lo in range(0, n, size):
            await _walk_ladder(job, steps, caps, range(lo, min(lo + size, n)))
    else:
        await caps.check([t for t, step in steps.items() if isinstance(step, Ready)])
    out = [_recipient_preview(i, job, plan, steps) for i, plan in enumerate(plans)]
    warnings = list(accepted.warnings)
    if check_caps is None and policy.caps:
        warnings.append("frequency caps were not evaluated (no store): every capped message shows would_send")
    return Preview(job.campaign, rfc3339(now), warnings, out)


class OverRenderLimit(Exception):
    """A template passes a render limit for a recipient: preview answers 400 naming it."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def _refuse_over_limit(job: Job, i: int, plan: RecipientPlan) -> None:
    failure = plan.choice.failure if plan.choice is not None else None
    if failure is None or failure.reason != d.RENDER_LIMIT:
        return
    index = next((n for n, v in enumerate(job.variants) if v.name == failure.variant), 0)
    raise OverRenderLimit(f"$.variants[{index}].{failure.path}", f"render limit for recipient {i}: {failure.detail}")


class _Caps:
    """Read-only cap checks, round after round, each counting the grants of those before."""

    def __init__(
        self,
        job: Job,
        policy: Policy,
        steps: dict[tuple[int, str], Step],
        now: float,
        check: CheckCaps | None,
        tenant: str,
    ):
        self.job, self.policy, self.steps, self.now, self._check = job, policy, steps, now, check
        self.tenant = tenant
        self.granted: list[CapRequest] = []
        self.expires = job.expires_at.timestamp() if job.expires_at is not None else None

    async def check(self, targets: list[tuple[int, str]]) -> None:
        if self._check is None or not targets:
            return
        recipients = self.job.recipients
        requests = []
        for i, name in targets:
            step = self.steps[(i, name)]
            assert isinstance(step, Ready)
            requests.append(self.policy.caps_request(self.job, recipients[i], name, step.tz, self.now, self.tenant))
        outcomes = (await self._check([*self.granted, *requests], self.now))[len(self.granted) :]
        for target, request, outcome in zip(targets, requests, outcomes, strict=True):
            if isinstance(outcome, Denied):
                step = self.steps[target]
                self.steps[target] = cap_verdict(outcome, self.expires, step.flags)
            else:
                self.granted.append(request)


async def _walk_ladder(job: Job, steps: dict[tuple[int, str], Step], caps: _Caps, batch: range) -> None:
    """Routing `first`, as a send walks a batch when every delivery is accepted: a recipient
    is reached by its first channel that would send (or waits on one that is deferred); the
    channels after it read `fallback_not_needed`. Caps count channel by channel within the
    batch, and batch after batch (the send takes a user's caps in that order too)."""
    pending = set(batch)
    for position, name in enumerate(job.channels):
        await caps.check([(i, name) for i in sorted(pending) if isinstance(steps[(i, name)], Ready)])
        for i in sorted(pending):
            step = steps[(i, name)]
            if not (isinstance(step, Ready) or step.outcome == "deferred"):
                continue
            pending.discard(i)
            detail = None if isinstance(step, Ready) else f"waiting for {name}"
            for later in job.channels[position + 1 :]:
                steps[(i, later)] = Verdict("suppressed", d.NOT_NEEDED, detail)


def _recipient_preview(i: int, job: Job, plan: RecipientPlan, steps: dict[tuple[int, str], Step]) -> RecipientPreview:
    choice = plan.choice
    assert choice is not None
    rows = []
    for name, planned in plan.channels.items():
        step = steps[(i, name)]
        rendered = planned.content if isinstance(planned, Ready) else choice.contents.get(name)
        content = msgspec.to_builtins(rendered) if rendered is not None else None
        if isinstance(step, Ready):
            sends = len(step.destinations)
            rows.append(ChannelPreview(name, WOULD_SEND, None, step.note, None, step.flags, sends, content))
        else:
            until = rfc3339(step.until) if step.until is not None else None
            rows.append(ChannelPreview(name, step.outcome, step.reason, step.detail, until, step.flags, 0, content))
    skipped = [SkippedVariant(s.variant, s.reason, s.path, s.detail) for s in choice.skipped]
    return RecipientPreview(i, job.recipients[i].user_id, choice.variant, skipped, rows)


def summary(content: dict[str, Any] | None, width: int = 60) -> str:
    """One line of copy for the table: title + body, subject, or speech."""
    if not content:
        return ""
    parts = [content.get(k) for k in ("title", "body", "subject", "text", "speech") if content.get(k)]
    text = " | ".join(str(p).replace("\n", " ") for p in parts[:2])
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def table(result: Preview) -> str:
    lines = [f"campaign {result.campaign}, evaluated at {result.now}"]
    lines += [f"warning: {w}" for w in result.warnings]
    rows = [("recipient", "variant", "channel", "decision", "reason / detail", "content")]
    for r in result.recipients:
        first = True
        for c in r.channels:
            until = f"until {c.until}" if c.until else None
            why = " - ".join(x for x in (c.reason, c.detail, until, *(c.flags or ())) if x)
            rows.append(
                (
                    r.user_id if first else "",
                    (r.variant or "(none)") if first else "",
                    c.channel,
                    c.outcome,
                    why,
                    summary(c.content),
                )
            )
            first = False
        for s in r.skipped:
            why = "condition false" if s.reason == "condition_false" else f"{s.reason} at {s.path}: {s.detail}"
            rows.append(("", f"  skipped {s.variant}", "", "", why, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_instant(value: str) -> float:
    """RFC 3339 (`2026-11-28T12:00:00Z`) to epoch seconds; an offset is required."""
    instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    problem = instant_problem(instant)
    if problem:
        raise ValueError(problem)
    return instant.timestamp()


NOT_CONFIGURED = "not_configured"


class _StandIn(Channel):
    """An installed channel that has no config here, standing in for it in a preview: its
    name, subscription group, content kind and payload limit, so policy is evaluated as a
    send would evaluate it. Nothing is ever sent through it."""

    real: type[Channel]

    def __init__(self) -> None:
        self.config = None

    def destinations(self, recipient: Any) -> list[Any]:
        try:  # the channel's own rule (an email address, its devices) when it needs no config
            return self.real.destinations(self, recipient)
        except AttributeError:
            return super().destinations(recipient)

    def payload_size(self, content: Any) -> int:
        try:
            return self.real.payload_size(self, content)
        except AttributeError:
            return super().payload_size(content)


def stand_in(cls: type[Channel]) -> Channel:
    attributes = {
        "name": cls.name,
        "content_kind": cls.content_kind,
        "subscription_group": cls.subscription_group,
        "max_payload_bytes": cls.max_payload_bytes,
        "real": cls,
    }
    return type(f"Unconfigured{cls.__name__}", (_StandIn,), attributes)()


def mark_not_configured(result: Preview, names: set[str]) -> None:
    """Flag the decisions of stand-in channels, and say so once in the warnings."""
    if not names:
        return
    result.warnings.append(
        f"not configured here: {', '.join(sorted(names))}; policy is evaluated for them as for a send, "
        "and nothing could be sent (flag not_configured)"
    )
    for recipient in result.recipients:
        for row in recipient.channels:
            if row.channel in names:
                row.flags = [*(row.flags or ()), NOT_CONFIGURED]
