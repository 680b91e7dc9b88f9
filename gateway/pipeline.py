"""One job, batch by batch: personalize -> policy -> dispatch -> decisions.

The per-recipient work is plain calls over Structs; the awaits are per channel per batch
(one `send_batch` each), the store write and the observer hooks once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pluggy

from gateway import decision as d
from gateway.channel import Channel, Delivery, InvalidToken, PermanentFailure, Result, Sent
from gateway.clock import Clock
from gateway.decision import Decision
from gateway.dispatch.retry import Retrier
from gateway.intake.model import Device, Job
from gateway.metrics import Metrics
from gateway.personalize.render import MissingData, Personalizer, context
from gateway.personalize.templates import CompiledVariant
from gateway.policy import rules
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
        personalizer = Personalizer(running.job, running.variants)
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
        decided: dict[tuple[int, str], Decision] = {}
        if job.routing == "all":
            await self._round(running, personalizer, indices, job.channels, decided)
        else:
            remaining = list(indices)
            for position, channel in enumerate(job.channels):
                sent = await self._round(running, personalizer, remaining, [channel], decided)
                remaining = [i for i in remaining if i not in sent]
                for i in sent:
                    for later in job.channels[position + 1:]:
                        decided[(i, later)] = self._decision(running, i, later, "suppressed", d.NOT_NEEDED)
                if not remaining:
                    break
        return [decided[(i, c)] for i in indices for c in job.channels]

    async def _round(self, running: RunningJob, personalizer: Personalizer, indices: Sequence[int],
                     channel_names: Sequence[str], decided: dict[tuple[int, str], Decision]) -> set[int]:
        """Decide `indices` x `channel_names`; return the recipients sent on some channel."""
        job = running.job
        now = self.clock.now()
        outgoing: dict[str, list[Delivery]] = {}
        variants: dict[tuple[int, str], str] = {}
        for i in indices:
            recipient = job.recipients[i]
            ctx = None
            for name in channel_names:
                channel = self.channels.get(name)
                reason, destinations = rules.check(job, recipient, channel, now)
                if reason is not None:
                    decided[(i, name)] = self._decision(running, i, name, "suppressed", reason)
                    continue
                assert channel is not None
                if ctx is None:
                    ctx = context(job, recipient, name)
                try:
                    variant, content = personalizer.render(recipient, name, channel.content_kind, ctx)
                except MissingData as exc:
                    decided[(i, name)] = self._decision(running, i, name, "suppressed", d.MISSING_DATA,
                                                        f"{exc.path}: {exc.detail}", exc.variant)
                    continue
                if content is None:
                    decided[(i, name)] = self._decision(running, i, name, "suppressed", d.NO_CONTENT,
                                                        f"variant has no {channel.content_kind} content", variant)
                    continue
                variants[(i, name)] = variant
                queue = outgoing.setdefault(name, [])
                for k, to in enumerate(destinations):
                    queue.append(Delivery(
                        id=f"{running.id}.{i}.{name}.{k}", job_id=running.id, campaign=job.campaign,
                        category=job.category, recipient=i, user_id=recipient.user_id, channel=name,
                        to=to, content=content, tags=job.tags, expires_at=job.expires_at))
        if not outgoing:
            return set()
        names = list(outgoing)
        all_results = await asyncio.gather(
            *(self.retrier.send(running.id, self.channels[n], outgoing[n]) for n in names))
        sent: set[int] = set()
        for name, results in zip(names, all_results, strict=True):
            sent |= self._aggregate(running, name, outgoing[name], results, variants, decided)
        return sent

    def _aggregate(self, running: RunningJob, channel: str, deliveries: list[Delivery], results: list[Result],
                   variants: dict[tuple[int, str], str], decided: dict[tuple[int, str], Decision]) -> set[int]:
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
            tokens = [_token(dv.to) for dv in dead] or None
            variant = variants[(i, channel)]
            ok = [r for _, r in pairs if isinstance(r, Sent)]
            if ok:
                sent.add(i)
                detail = None if len(ok) == len(pairs) else f"{len(ok)} of {len(pairs)} devices"
                decision = self._decision(running, i, channel, "sent", None, detail, variant)
                for _ in ok:
                    self.metrics.delivery_latency.observe(elapsed, channel)
            elif len(dead) == len(pairs):
                reason = pairs[0][1].reason  # type: ignore[union-attr]
                decision = self._decision(running, i, channel, "invalid_token", reason, None, variant)
            else:
                failure = next(r for _, r in pairs if isinstance(r, PermanentFailure))
                decision = self._decision(running, i, channel, "failed", failure.reason, failure.detail, variant)
            decision.invalid_tokens = tokens
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
