"""One job, batch by batch: plan (policy, personalize) -> caps -> dispatch -> decisions.

The per-recipient work is plain calls over Structs; the awaits are per batch: one caps
reservation per routing round, one `send_batch` per channel, one store write (decisions,
cursor and deferred messages together) and one call of each observer hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pluggy

from gateway import decision as d
from gateway.channel import Channel, Delivery, InvalidToken, PermanentFailure, Result, Sent
from gateway.clock import Clock
from gateway.decision import Decision
from gateway.dispatch.breaker import PROVIDER_UNAVAILABLE
from gateway.dispatch.retry import Postponed, Retrier
from gateway.intake.model import JOB_DECODER, Device, Job
from gateway.metrics import Metrics
from gateway.personalize.render import Personalizer
from gateway.personalize.templates import CompiledVariant, compile_job
from gateway.planning import Ready, RecipientPlan, Verdict, plan_recipient
from gateway.policy.caps import Denied
from gateway.policy.engine import FREQUENCY_CAP, Policy
from gateway.store import Store
from gateway.store.base import DeferredItem


@dataclass
class RunningJob:
    id: str
    job: Job
    variants: list[CompiledVariant]
    cursor: int  # first recipient not yet decided
    accepted_at: float  # monotonic, for the latency histogram
    personalizer: Personalizer | None = None


async def load_job(store: Store, job_id: str, cursor: int, accepted_at: float) -> RunningJob:
    """A stored job, ready to run again (resumed at start-up, or deferred messages due):
    decoded from its stored body, templates compiled once more (they were validated at
    intake, so no length limit applies here)."""
    job = JOB_DECODER.decode(await store.job_body(job_id))
    return RunningJob(job_id, job, compile_job(job, max_template_chars=10**9), cursor, accepted_at)


@dataclass
class BatchOutcome:
    decisions: list[Decision] = field(default_factory=list)
    deferred: list[DeferredItem] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        store: Store,
        channels: dict[str, Channel],
        retrier: Retrier,
        pm: pluggy.PluginManager,
        metrics: Metrics,
        clock: Clock,
        batch_size: int,
        policy: Policy,
    ):
        self.store = store
        self.channels = channels
        self.retrier = retrier
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.batch_size = batch_size
        self.policy = policy

    def personalizer(self, running: RunningJob) -> Personalizer:
        if running.personalizer is None:
            running.personalizer = Personalizer(
                running.job, running.variants, {name: c.content_kind for name, c in self.channels.items()}
            )
        return running.personalizer

    async def run(self, running: RunningJob, stopping: asyncio.Event | None = None) -> bool:
        """Process the job from its cursor. Returns False when stopped early (the rest
        resumes from the stored cursor on the next start)."""
        recipients = running.job.recipients
        while running.cursor < len(recipients):
            if stopping is not None and stopping.is_set():
                return False
            lo = running.cursor
            hi = min(lo + self.batch_size, len(recipients))
            outcome = await self.process_batch(running, [(i, None) for i in range(lo, hi)])
            await self.store.record_batch(running.id, hi, outcome.decisions, self.clock.now(), outcome.deferred)
            running.cursor = hi
            self._observe(running.id, outcome.decisions)
        await self.store.finish_job(running.id, self.clock.now())
        return True

    async def release(self, running: RunningJob, items: Sequence[DeferredItem]) -> BatchOutcome:
        """Deferred messages coming due: policy again (a cap may have filled, quiet hours
        may still hold), then send."""
        outcome = await self.process_batch(running, [(item.recipient, item.channel) for item in items], released=True)
        self._observe(running.id, outcome.decisions)
        return outcome

    def _observe(self, job_id: str, decisions: list[Decision]) -> None:
        for decision in decisions:
            self.metrics.decisions.inc(decision.channel, decision.outcome)
        self.pm.hook.decisions_recorded(job_id=job_id, decisions=decisions)

    async def process_batch(
        self, running: RunningJob, targets: Sequence[tuple[int, str | None]], released: bool = False
    ) -> BatchOutcome:
        """`targets`: (recipient, None) for all the job's channels, or (recipient,
        channel) for one (a released deferred message)."""
        job = running.job
        now = self.clock.now()
        personalizer = self.personalizer(running)
        wanted: dict[int, list[str] | None] = {}
        for i, only in targets:  # one plan per recipient, for all its targeted channels
            if only is None:
                wanted[i] = None
            else:
                channels = wanted.setdefault(i, [])
                assert channels is not None
                channels.append(only)
        plans = {
            i: plan_recipient(
                job, personalizer, self.channels, self.policy, job.recipients[i], now, only=only, released=released
            )
            for i, only in wanted.items()
        }
        decided: dict[tuple[int, str], Decision] = {}
        for i, plan in plans.items():
            for channel, step in plan.channels.items():
                if isinstance(step, Verdict):
                    decided[(i, channel)] = self._decision(running, i, channel, step, plan.variant)
        if job.routing == "all" or released:
            await self._send(
                running,
                plans,
                [(i, c) for i, p in plans.items() for c, s in p.channels.items() if isinstance(s, Ready)],
                decided,
                now,
            )
        else:  # "first": channel by channel, for recipients not yet reached or waiting
            pending = set(plans)
            for position, channel in enumerate(job.channels):
                targets_now = [(i, channel) for i in sorted(pending) if isinstance(plans[i].channels[channel], Ready)]
                await self._send(running, plans, targets_now, decided, now)
                for i in sorted(pending):
                    outcome = decided[(i, channel)].outcome
                    if outcome in ("sent", "deferred"):
                        pending.discard(i)
                        detail = None if outcome == "sent" else f"waiting for {channel}"
                        for later in job.channels[position + 1 :]:
                            decided[(i, later)] = self._decision(
                                running, i, later, Verdict("suppressed", d.NOT_NEEDED, detail), plans[i].variant
                            )
                if not pending:
                    break
        result = BatchOutcome()
        for i, only in targets:
            for channel in [only] if only is not None else job.channels:
                decision = decided[(i, channel)]
                result.decisions.append(decision)
                if decision.outcome == "deferred" and decision.until is not None:
                    result.deferred.append(DeferredItem(running.id, i, channel, decision.until, decision.reason or ""))
        return result

    async def _send(
        self,
        running: RunningJob,
        plans: dict[int, RecipientPlan],
        targets: list[tuple[int, str]],
        decided: dict[tuple[int, str], Decision],
        now: float,
    ) -> None:
        """Reserve caps for `targets`, deliver what was granted, decide all of them."""
        job = running.job
        open_now = {name for _, name in targets if not self.retrier.breaker(name).allows(now)}
        for i, name in [t for t in targets if t[1] in open_now]:
            step = plans[i].channels[name]
            until = self.retrier.breaker(name).retry_at()
            decided[(i, name)] = self._decision(
                running,
                i,
                name,
                Verdict(
                    "deferred",
                    PROVIDER_UNAVAILABLE,
                    f"{name} is failing: circuit open",
                    until,
                    step.flags if isinstance(step, Ready) else None,
                ),
                plans[i].variant,
            )
        targets = [t for t in targets if t[1] not in open_now]
        if not targets:
            return
        requests = []
        for i, name in targets:
            step = plans[i].channels[name]
            assert isinstance(step, Ready)
            requests.append(self.policy.caps_request(job, job.recipients[i], name, step.tz, now))
        granted: list[tuple[int, str]] = []
        expires = job.expires_at.timestamp() if job.expires_at is not None else None
        for (i, name), outcome in zip(targets, await self.store.reserve_caps(requests, now), strict=True):
            step = plans[i].channels[name]
            assert isinstance(step, Ready)
            if isinstance(outcome, Denied):
                if outcome.action == "defer" and (expires is None or outcome.free_at <= expires):
                    verdict = Verdict("deferred", FREQUENCY_CAP, outcome.rule, outcome.free_at, step.flags)
                elif outcome.action == "defer":
                    verdict = Verdict("capped", outcome.rule, "no slot frees before expires_at", flags=step.flags)
                else:
                    verdict = Verdict("capped", outcome.rule, flags=step.flags)
                decided[(i, name)] = self._decision(running, i, name, verdict, plans[i].variant)
                continue
            step.reservation = outcome.reservation
            granted.append((i, name))
        outgoing: dict[str, list[Delivery]] = {}
        for i, name in granted:
            step = plans[i].channels[name]
            assert isinstance(step, Ready)
            queue = outgoing.setdefault(name, [])
            user_id = job.recipients[i].user_id
            for k, to in enumerate(step.destinations):
                queue.append(
                    Delivery(
                        id=f"{running.id}.{i}.{name}.{k}",
                        job_id=running.id,
                        campaign=job.campaign,
                        category=job.category,
                        recipient=i,
                        user_id=user_id,
                        channel=name,
                        to=to,
                        content=step.content,
                        tags=job.tags,
                        expires_at=job.expires_at,
                    )
                )
        if not outgoing:
            return
        names = list(outgoing)
        all_results = await asyncio.gather(
            *(self.retrier.send(running.id, self.channels[n], outgoing[n]) for n in names)
        )
        refunds: list[str] = []
        for name, results in zip(names, all_results, strict=True):
            self._aggregate(running, plans, name, outgoing[name], results, decided)
        for i, name in granted:
            step = plans[i].channels[name]
            if decided[(i, name)].outcome != "sent" and isinstance(step, Ready) and step.reservation:
                refunds.append(step.reservation)  # not delivered: it does not count
        if refunds:
            await self.store.refund_caps(refunds)

    def _aggregate(
        self,
        running: RunningJob,
        plans: dict[int, RecipientPlan],
        channel: str,
        deliveries: list[Delivery],
        results: list[Result | Postponed],
        decided: dict[tuple[int, str], Decision],
    ) -> None:
        """Devices of one recipient on one channel make one decision: sent if any device
        got it; invalid_token if every device is dead; else failed with the first reason."""
        by_recipient: dict[int, list[tuple[Delivery, Result]]] = {}
        sent_count = 0
        user_ids = running.job.recipients
        at = self.clock.now()
        for delivery, result in zip(deliveries, results, strict=True):
            i = delivery.recipient
            pairs = by_recipient.get(i)
            if pairs is None:
                by_recipient[i] = [(delivery, result)]
            else:
                pairs.append((delivery, result))
        dead_all: list[Delivery] = []
        for i, pairs in by_recipient.items():
            plan = plans[i]
            step = plan.channels[channel]
            assert isinstance(step, Ready)
            if len(pairs) == 1 and type(pairs[0][1]) is Sent:  # the common case, decided directly
                decided[(i, channel)] = Decision(
                    recipient=i,
                    user_id=user_ids[i].user_id,
                    channel=channel,
                    outcome="sent",
                    detail=step.note,
                    variant=plan.variant,
                    at=at,
                    flags=step.flags,
                )
                sent_count += 1
                continue
            dead = [dv for dv, r in pairs if isinstance(r, InvalidToken)]
            dead_all += dead
            ok = [r for _, r in pairs if isinstance(r, Sent)]
            if ok:
                notes = [
                    n for n in (step.note, None if len(ok) == len(pairs) else f"{len(ok)} of {len(pairs)} devices") if n
                ]
                verdict = Verdict("sent", "", "; ".join(notes) or None, flags=step.flags)
                sent_count += len(ok)
            elif all(isinstance(r, Postponed) for _, r in pairs):
                until = max(r.until for _, r in pairs if isinstance(r, Postponed))
                verdict = Verdict(
                    "deferred", PROVIDER_UNAVAILABLE, f"{channel} is failing: circuit open", until, step.flags
                )
            elif len(dead) == len(pairs):
                verdict = Verdict("invalid_token", pairs[0][1].reason, flags=step.flags)  # type: ignore[union-attr]
            else:
                failure = next((r for _, r in pairs if isinstance(r, PermanentFailure)), None)
                if failure is None:  # some devices dead, the others postponed
                    failure = PermanentFailure(PROVIDER_UNAVAILABLE, "circuit opened during retries")
                verdict = Verdict("failed", failure.reason, failure.detail, flags=step.flags)
            decision = self._decision(running, i, channel, verdict, plans[i].variant)
            decision.invalid_tokens = [_token(dv.to) for dv in dead] or None
            decided[(i, channel)] = decision
        if sent_count:  # one histogram update per batch: the deliveries share `elapsed`
            elapsed = self.clock.monotonic() - running.accepted_at
            self.metrics.delivery_latency.observe(elapsed, channel, times=sent_count)
        if dead_all:
            self.pm.hook.tokens_invalidated(channel=channel, deliveries=dead_all)

    def _decision(self, running: RunningJob, i: int, channel: str, verdict: Verdict, variant: str | None) -> Decision:
        return Decision(
            recipient=i,
            user_id=running.job.recipients[i].user_id,
            channel=channel,
            outcome=verdict.outcome,
            reason=verdict.reason or None,
            detail=verdict.detail,
            variant=variant,
            until=verdict.until,
            at=self.clock.now(),
            flags=verdict.flags,
        )


def _token(to: Device | str) -> str:
    if isinstance(to, str):
        return to
    if to.token is not None:
        return to.token
    if to.subscription is not None:
        return to.subscription.endpoint
    return f"{to.target}/{to.device_id}"
