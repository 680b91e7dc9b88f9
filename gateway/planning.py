"""What each recipient would get, before anything is sent: policy, variant, content.

Shared by the pipeline (which then dispatches what is ready) and by preview (which
shows it), so a preview is exactly what a send would do up to the provider call.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import decision as d
from gateway.channel import Channel, RenderedContent
from gateway.intake.model import Device, Job, PushContent, Recipient
from gateway.personalize.fit import PAYLOAD_TOO_LARGE, PayloadTooLarge, fit_push
from gateway.personalize.render import Choice, Personalizer
from gateway.policy import rules


@dataclass
class Ready:
    """May be sent: where, what, and a note for the decision (e.g. body shortened)."""

    destinations: list[Device | str]
    content: RenderedContent
    note: str | None = None


@dataclass
class Verdict:
    """Will not be sent, and why."""

    outcome: d.Outcome
    reason: str
    detail: str | None = None


@dataclass
class RecipientPlan:
    choice: Choice | None  # None when no channel passed policy (nothing to render)
    channels: dict[str, Ready | Verdict]  # in the job's channel order

    @property
    def variant(self) -> str | None:
        return self.choice.variant if self.choice else None


def plan_recipient(job: Job, personalizer: Personalizer, channels: dict[str, Channel], recipient: Recipient,
                   now: float, always_choose: bool = False) -> RecipientPlan:
    """`always_choose`: render even when no channel can send (preview shows the copy);
    the pipeline skips that work."""
    steps: dict[str, Ready | Verdict] = {}
    passing: list[tuple[str, Channel, list[Device | str]]] = []
    for name in job.channels:
        channel = channels.get(name)
        reason, destinations = rules.check(job, recipient, channel, now)
        if reason is not None:
            steps[name] = Verdict("suppressed", reason)
        else:
            assert channel is not None
            passing.append((name, channel, destinations))
    if not passing and not always_choose:
        return RecipientPlan(None, steps)
    choice = personalizer.choose(recipient)
    failure = choice.failure
    for name, channel, destinations in passing:
        if failure is not None:
            steps[name] = Verdict("suppressed", failure.reason, f"{failure.variant}: {failure.path}: {failure.detail}")
            continue
        content = choice.contents.get(name)
        if content is None:
            steps[name] = Verdict("suppressed", d.NO_CONTENT, f"variant {choice.variant} has no "
                                                             f"{channel.content_kind} content")
            continue
        note = None
        if channel.max_payload_bytes is not None and isinstance(content, PushContent):
            try:
                content, note = fit_push(content, channel.max_payload_bytes, channel.payload_size)
            except PayloadTooLarge as exc:
                steps[name] = Verdict("failed", PAYLOAD_TOO_LARGE, str(exc))
                continue
        steps[name] = Ready(destinations, content, note)
    return RecipientPlan(choice, {name: steps[name] for name in job.channels})
