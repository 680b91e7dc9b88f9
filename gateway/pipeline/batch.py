"""The state of a job, and of one batch of its recipients on its way through the stages."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.clock import Clock
from gateway.model.decision import Decision
from gateway.model.delivery import Result
from gateway.model.job import Job
from gateway.personalize.render import Personalizer
from gateway.personalize.templates import CompiledVariant
from gateway.pipeline.plan import Ready, RecipientPlan
from gateway.policy.engine import Verdict
from gateway.store.base import DeferredItem, DeferredState

Target = tuple[int, str]  # (recipient index, channel)


@dataclass
class RunningJob:
    id: str
    job: Job
    variants: list[CompiledVariant]
    cursor: int  # recipients before it have all their decisions stored
    accepted_at: float  # monotonic, for the latency histogram
    personalizer: Personalizer | None = None
    # Providers' final answers by delivery id, kept until their decisions are stored: a
    # batch run again (after a failed write, a crash, a takeover) does not send these.
    # (By recipient, then delivery id.)
    acks: dict[int, dict[str, Result]] = field(default_factory=dict)
    finished: bool = False  # its last record closed it (`finish_job` done)
    counts: dict[str, int] = field(default_factory=dict)  # decisions by outcome, this run
    tenant: str = "default"  # whose job: opt-outs and caps are per tenant
    cancelled: bool = False  # a cancel was asked for: no further batch starts


class Batch:
    """Recipients planned at one instant, and the decisions made for them so far."""

    __slots__ = ("carried", "clock", "decided", "now", "plans", "prefilled", "recipients", "retry", "running")

    def __init__(self, running: RunningJob, clock: Clock, now: float):
        self.running = running
        self.clock = clock
        self.now = now  # the instant policy was checked at
        self.plans: dict[int, RecipientPlan] = {}
        self.decided: dict[Target, Decision] = {}
        self.recipients = running.job.recipients
        # Deferred by dispatch (retrying, circuit open, busy): what the release goes on from.
        self.retry: dict[Target, DeferredState] = {}
        self.carried: dict[Target, DeferredItem] = {}  # released messages, with their retry state
        self.prefilled: set[str] = set()  # deliveries answered before this batch (not sent again)

    def ready(self, target: Target) -> Ready:
        step = self.plans[target[0]].channels[target[1]]
        assert isinstance(step, Ready)
        return step

    def decide(self, target: Target, verdict: Verdict) -> Decision:
        i, channel = target
        choice = self.plans[i].choice
        decision = self.decided[target] = Decision(
            recipient=i,
            user_id=self.recipients[i].user_id,
            channel=channel,
            outcome=verdict.outcome,
            reason=verdict.reason or None,
            detail=verdict.detail,
            variant=choice.variant if choice is not None else None,
            until=verdict.until,
            at=self.clock.now(),
            flags=verdict.flags,
        )
        return decision

    def sent(self, target: Target, step: Ready) -> None:
        """The common case, decided without a Verdict: one device, sent."""
        i, channel = target
        choice = self.plans[i].choice
        self.decided[target] = Decision(
            recipient=i,
            user_id=self.recipients[i].user_id,
            channel=channel,
            outcome="sent",
            detail=step.note,
            variant=choice.variant if choice is not None else None,
            at=self.clock.now(),
            flags=step.flags,
        )


@dataclass
class BatchOutcome:
    decisions: list[Decision] = field(default_factory=list)
    deferred: list[DeferredItem] = field(default_factory=list)
