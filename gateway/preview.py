"""Preview: what a job would do to each recipient, without sending anything.

For every recipient: the chosen variant, why each earlier variant was skipped, the
rendered content per channel, and the decision each channel would get now (or at a
fixed `now`). Nothing is sent and nothing is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.channel import Channel
from gateway.intake.validate import AcceptedJob, instant_problem
from gateway.personalize.render import Personalizer
from gateway.pipeline.plan import Ready, plan_recipient
from gateway.policy.engine import Policy

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


def preview(accepted: AcceptedJob, channels: dict[str, Channel], policy: Policy, now: float) -> Preview:
    """Frequency caps are not evaluated: checking one would consume the slot; they are
    applied when the job is sent."""
    job = accepted.job
    personalizer = Personalizer(job, accepted.variants, {n: c.content_kind for n, c in channels.items()})
    out = []
    for i, recipient in enumerate(job.recipients):
        plan = plan_recipient(job, personalizer, channels, policy, recipient, now, always_choose=True)
        choice = plan.choice
        assert choice is not None
        rows = []
        for name, step in plan.channels.items():
            rendered = step.content if isinstance(step, Ready) else choice.contents.get(name)
            content = msgspec.to_builtins(rendered) if rendered is not None else None
            if isinstance(step, Ready):
                rows.append(
                    ChannelPreview(name, WOULD_SEND, None, step.note, None, step.flags, len(step.destinations), content)
                )
            else:
                until = _iso(step.until) if step.until is not None else None
                rows.append(ChannelPreview(name, step.outcome, step.reason, step.detail, until, step.flags, 0, content))
        skipped = [SkippedVariant(s.variant, s.reason, s.path, s.detail) for s in choice.skipped]
        out.append(RecipientPreview(i, recipient.user_id, choice.variant, skipped, rows))
    return Preview(job.campaign, _iso(now), accepted.warnings, out)


def _iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


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
