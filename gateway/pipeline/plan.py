"""What each recipient would get, before anything is sent: policy, variant, content.

Shared by the pipeline (which then reserves caps and dispatches what is ready) and by
preview (which shows it), so a preview is what a send would do up to the provider call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from gateway.channel import Channel
from gateway.model import decision as d
from gateway.model.delivery import RenderedContent
from gateway.model.job import Device, Job, PushContent, Recipient
from gateway.personalize.fit import PayloadTooLarge, fit_push
from gateway.personalize.render import Choice, Personalizer
from gateway.policy.engine import Policy, Screening, Verdict


@dataclass
class Ready:
    """May be sent now, subject to the frequency caps."""

    destinations: list[Device | str]
    content: RenderedContent
    tz: ZoneInfo
    note: str | None = None  # for the decision, e.g. "body shortened ..."
    flags: list[str] | None = None
    reservation: str | None = None  # the caps reservation, once granted


@dataclass
class RecipientPlan:
    choice: Choice | None  # None when no channel passed policy (nothing to render)
    channels: dict[str, Ready | Verdict]  # in the job's channel order

    @property
    def variant(self) -> str | None:
        return self.choice.variant if self.choice else None


def plan_recipient(
    job: Job,
    personalizer: Personalizer,
    channels: dict[str, Channel],
    policy: Policy,
    recipient: Recipient,
    now: float,
    only: Sequence[str] | None = None,
    released: bool = False,
    always_choose: bool = False,
    tenant: str = "default",
) -> RecipientPlan:
    """`only`: plan just these channels (a deferred message coming due, with `released`).
    `always_choose`: render even when no channel can send (preview shows the copy)."""
    steps: dict[str, Ready | Verdict] = {}
    passing: list[tuple[str, Channel, Screening]] = []
    for name in only if only is not None else job.channels:
        channel = channels.get(name)
        screening = policy.check(job, recipient, channel, name, now, released, tenant)
        if type(screening) is Verdict:
            steps[name] = screening
        else:
            assert channel is not None and type(screening) is Screening
            passing.append((name, channel, screening))
    # A deferred message says which variant it will carry (rendered again when released).
    if not passing and not always_choose and not any(v.outcome == "deferred" for v in steps.values()):  # type: ignore[union-attr]
        return RecipientPlan(None, steps)
    choice = personalizer.choose(recipient)
    failure = choice.failure
    for name, channel, screening in passing:
        if failure is not None:
            # No variant renders: the data is missing (suppressed), or a template broke a
            # render limit for this recipient (failed: a hostile template, not their data).
            steps[name] = Verdict(
                "failed" if failure.reason == d.RENDER_LIMIT else "suppressed",
                failure.reason,
                f"{failure.variant}: {failure.path}: {failure.detail}",
                flags=screening.flags,
            )
            continue
        content = choice.contents.get(name)
        if content is None:
            steps[name] = Verdict(
                "suppressed",
                d.NO_CONTENT,
                f"variant {choice.variant} has no {channel.content_kind} content",
                flags=screening.flags,
            )
            continue
        note = None
        if channel.max_payload_bytes is not None and isinstance(content, PushContent):
            try:
                content, note = fit_push(content, channel.max_payload_bytes, channel.payload_size)
            except PayloadTooLarge as exc:
                steps[name] = Verdict("failed", d.PAYLOAD_TOO_LARGE, str(exc), flags=screening.flags)
                continue
        steps[name] = Ready(screening.destinations, content, screening.tz, note, screening.flags)
    order = only if only is not None else job.channels
    return RecipientPlan(choice, {name: steps[name] for name in order})
