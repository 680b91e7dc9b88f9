"""One job, batch by batch: plan (policy, personalize) -> dispatch -> decisions.

The per-recipient work is plain calls over Structs; the awaits are per channel per batch
(one `send_batch` each), the store write and the observer hooks once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pluggy

from gateway import decision as d
from gateway.channel import Channel, Delivery, InvalidToken, PermanentFailure, Result, Sent
from gateway.clock import Clock
from gateway.decision import Decision
from gateway.dispatch.retry import Retrier
from gateway.intake.model import Device, Job
from gateway.metrics import Metrics
from gateway.personalize.render import Personalizer
from gateway.personalize.templates import CompiledVariant
from gateway.planning import Ready, RecipientPlan, Verdict, plan_recipient
from gateway.store import Store


@dataclass
class RunningJob:
    id: str
    job: Job
    variants: list[CompiledVariant]
    cursor: int  # first recipient not yet decided
    accepted_at: float  # monotonic, for the latency histogram


class Pipeline:
    def __init__(self, store: Store, channels: dict[str, Channel], retrier: Retrier, pm: pluggy.PluginManager,
                 metrics: Metrics, clock: Clock, batch_size: int):
        self.store = store
        self.channels = channels
        self.retrier = retrier
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.batch_size = batch_size

    async def run(self, running: RunningJob, stopping: asyncio.Event | None = None) -> bool:
        """Process the job from its cursor. Returns False when stopped early (the rest
        resumes from the stored cursor on the next start)."""
        personalizer = Personalizer(running.job, running.variants,
                                    {name: c.content_kind for name, c in self.channels.items()})
        recipients = running.job.recipients
        while running.cursor < len(recipients):
            if stopping is not None and stopping.is_set():
                return False
            lo = running.cursor
            hi = min(lo + self.batch_size, len(recipients))
            decisions = await self.process_batch(running, personalizer, range(lo, hi))
            await self.store.record_batch(running.id, hi, decisions, self.clock.now())
            running.cursor = hi
            for decision in decisions:
                self.metrics.decisions.inc(decision.channel, decision.outcome)
            self.pm.hook.decisions_recorded(job_id=running.id, decisions=decisions)
        await self.store.finish_job(running.id, self.clock.now())
        return True

    async def process_batch(self, running: RunningJob, personalizer: Personalizer,
                            indices: Sequence[int]) -> list[Decision]:
        job = running.job
        now = self.clock.now()
        plans = {i: plan_recipient(job, personalizer, self.channels, job.recipients[i], now) for i in indices}
        decided: dict[tuple[int, str], Decision] = {}
        for i, plan in plans.items():
            for channel, step in plan.channels.items():
                if isinstance(step, Verdict):
                    decided[(i, channel)] = self._decision(running, i, channel, step.outcome, step.reason,
                                                           step.detail, plan.variant)
        if job.routing == "all":
            await self._send(running, plans, [(i, c) for i, p in plans.items()
                                              for c, s in p.channels.items() if isinstance(s, Ready)], decided)
        else:  # "first": channel by channel, only for recipients not yet reached
            pending = set(indices)
            for position, channel in enumerate(job.channels):
                targets = [(i, channel) for i in sorted(pending) if isinstance(plans[i].channels[channel], Ready)]
                for i in await self._send(running, plans, targets, decided):
                    pending.discard(i)
                    for later in job.channels[position + 1:]:
                        decided[(i, later)] = self._decision(running, i, later, "suppressed", d.NOT_NEEDED,
                                                             None, plans[i].variant)
                if not pending:
                    break
        return [decided[(i, c)] for i in indices for c in job.channels]

    async def _send(self, running: RunningJob, plans: dict[int, RecipientPlan], targets: Iterable[tuple[int, str]],
                    decided: dict[tuple[int, str], Decision]) -> set[int]:
        """Deliver the Ready steps of `targets`; decide them; return recipients sent."""
        job = running.job
        outgoing: dict[str, list[Delivery]] = {}
        for i, name in targets:
            step = plans[i].channels[name]
            assert isinstance(step, Ready)
            queue = outgoing.setdefault(name, [])
            user_id = job.recipients[i].user_id
            for k, to in enumerate(step.destinations):
                queue.append(Delivery(
                    id=f"{running.id}.{i}.{name}.{k}", job_id=running.id, campaign=job.campaign,
                    category=job.category, recipient=i, user_id=user_id, channel=name,
                    to=to, content=step.content, tags=job.tags, expires_at=job.expires_at))
        if not outgoing:
            return set()
        names = list(outgoing)
        all_results = await asyncio.gather(
            *(self.retrier.send(running.id, self.channels[n], outgoing[n]) for n in names))
        sent: set[int] = set()
        for name, results in zip(names, all_results, strict=True):
            sent |= self._aggregate(running, plans, name, outgoing[name], results, decided)
        return sent

    def _aggregate(self, running: RunningJob, plans: dict[int, RecipientPlan], channel: str,
                   deliveries: list[Delivery], results: list[Result],
                   decided: dict[tuple[int, str], Decision]) -> set[int]:
        """Devices of one recipient on one channel make one decision: sent if any device
        got it; invalid_token if every device is dead; else failed with the first reason."""
        by_recipient: dict[int, list[tuple[Delivery, Result]]] = {}
        for delivery, result in zip(deliveries, results, strict=True):
            by_recipient.setdefault(delivery.recipient, []).append((delivery, result))
        sent: set[int] = set()
        elapsed = self.clock.monotonic() - running.accepted_at
        dead_all: list[Delivery] = []
        for i, pairs in by_recipient.items():
            dead = [dv for dv, r in pairs if isinstance(r, InvalidToken)]
            dead_all += dead
            variant = plans[i].variant
            ok = [r for _, r in pairs if isinstance(r, Sent)]
            if ok:
                sent.add(i)
                step = plans[i].channels[channel]
                notes = [n for n in (step.note if isinstance(step, Ready) else None,
                                     None if len(ok) == len(pairs) else f"{len(ok)} of {len(pairs)} devices") if n]
                decision = self._decision(running, i, channel, "sent", None, "; ".join(notes) or None, variant)
                for _ in ok:
                    self.metrics.delivery_latency.observe(elapsed, channel)
            elif len(dead) == len(pairs):
                reason = pairs[0][1].reason  # type: ignore[union-attr]
                decision = self._decision(running, i, channel, "invalid_token", reason, None, variant)
            else:
                failure = next(r for _, r in pairs if isinstance(r, PermanentFailure))
                decision = self._decision(running, i, channel, "failed", failure.reason, failure.detail, variant)
            decision.invalid_tokens = [_token(dv.to) for dv in dead] or None
            decided[(i, channel)] = decision
        if dead_all:
            self.pm.hook.tokens_invalidated(channel=channel, deliveries=dead_all)
        return sent

    def _decision(self, running: RunningJob, i: int, channel: str, outcome: d.Outcome, reason: str | None,
                  detail: str | None = None, variant: str | None = None) -> Decision:
        return Decision(recipient=i, user_id=running.job.recipients[i].user_id, channel=channel, outcome=outcome,
                        reason=reason, detail=detail, variant=variant, at=self.clock.now())


def _token(to: Device | str) -> str:
    if isinstance(to, str):
        return to
    if to.token is not None:
        return to.token
    if to.subscription is not None:
        return to.subscription.endpoint
    return f"{to.target}/{to.device_id}"
