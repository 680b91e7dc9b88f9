"""One job, batch by batch, through named stages:

    plan     policy, variant and content per recipient (`plan.py`)
    route    which ready channels to deliver to, all at once or as a ladder (`routing.py`)
    hold     providers whose circuit is open: deferred, not attempted
    reserve  frequency-cap slots for the batch, all rules or none per message
    build    one Delivery per device
    send     each channel's share through dispatch (retries, breaker, in-flight budget)
    fold     device results into one decision per recipient and channel (`fold.py`)
    record   decisions, deferred messages and the cursor in one store write

The per-recipient work is plain calls over Structs; the awaits are per batch: one caps
reservation per routing round, one `send_batch` per channel, one store write and one call
of each observer hook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pluggy

from gateway.channel import Channel
from gateway.clock import Clock
from gateway.dispatch.retry import Retrier
from gateway.loader import observe
from gateway.metrics import Metrics
from gateway.model import decision as d
from gateway.model.caps import Denied
from gateway.model.decision import Decision
from gateway.model.delivery import Delivery, InvalidToken, Sent
from gateway.model.job import JOB_DECODER
from gateway.personalize.render import Personalizer
from gateway.personalize.templates import compile_job
from gateway.pipeline.batch import Batch, BatchOutcome, RunningJob, Target
from gateway.pipeline.fold import Answer, fold_devices, token_of
from gateway.pipeline.plan import Ready, RecipientPlan, Verdict, plan_recipient
from gateway.pipeline.routing import ROUTES, route_all
from gateway.policy.engine import Policy
from gateway.store import Store
from gateway.store.base import DeferredItem

log = logging.getLogger(__name__)
_INTERNAL_ERROR = Verdict(
    "failed", d.INTERNAL_ERROR, "the gateway could not plan this recipient; the log has the trace"
)


async def load_job(store: Store, job_id: str, cursor: int, accepted_at: float) -> RunningJob:
    """A stored job, ready to run again (resumed at start-up, or deferred messages due):
    decoded from its stored body, templates compiled once more (they were validated at
    intake, so no length limit applies here)."""
    job = JOB_DECODER.decode(await store.job_body(job_id))
    return RunningJob(job_id, job, compile_job(job, max_template_chars=10**9), cursor, accepted_at)


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

    # -- jobs ------------------------------------------------------------------------
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

    async def give_up(self, running: RunningJob, why: str) -> None:
        """Finish a job that keeps failing at its cursor: every recipient from there on is
        `failed: internal_error` (the log has the traces), so the job ends instead of
        failing at every restart."""
        job = running.job
        at = self.clock.now()
        decisions = [
            Decision(
                recipient=i,
                user_id=job.recipients[i].user_id,
                channel=channel,
                outcome="failed",
                reason=d.INTERNAL_ERROR,
                detail=why,
                at=at,
            )
            for i in range(running.cursor, len(job.recipients))
            for channel in job.channels
        ]
        log.error(
            "job %s: %s; recipients %d-%d are failed: internal_error",
            running.id,
            why,
            running.cursor,
            len(job.recipients) - 1,
        )
        await self.store.record_batch(running.id, len(job.recipients), decisions, at)
        running.cursor = len(job.recipients)
        self._observe(running.id, decisions)
        await self.store.finish_job(running.id, at)

    async def release(self, running: RunningJob, items: Sequence[DeferredItem]) -> BatchOutcome:
        """Deferred messages coming due: policy again (a cap may have filled, quiet hours
        may still hold), then send."""
        outcome = await self.process_batch(running, [(item.recipient, item.channel) for item in items], released=True)
        self._observe(running.id, outcome.decisions)
        return outcome

    def _observe(self, job_id: str, decisions: list[Decision]) -> None:
        channels = self.channels
        for decision in decisions:
            # A label per configured channel only: jobs may name any channel, and each new
            # name would be another time series on /metrics.
            label = decision.channel if decision.channel in channels else "other"
            self.metrics.decisions.inc(label, decision.outcome)
        observe(self.pm, "decisions_recorded", job_id=job_id, decisions=decisions)

    # -- one batch ---------------------------------------------------------------------
    async def process_batch(
        self, running: RunningJob, targets: Sequence[tuple[int, str | None]], released: bool = False
    ) -> BatchOutcome:
        """`targets`: (recipient, None) for all the job's channels, or (recipient,
        channel) for one (a released deferred message)."""
        batch = self.plan(running, targets, released)
        route = route_all if released else ROUTES[running.job.routing]
        await route(batch, running.job.channels, self.deliver)
        return self.outcome(batch, targets)

    def plan(self, running: RunningJob, targets: Sequence[tuple[int, str | None]], released: bool) -> Batch:
        """Stage `plan`: one plan per recipient, for all its targeted channels; what
        policy or personalization refused is decided here."""
        job = running.job
        now = self.clock.now()
        personalizer = self._personalizer(running)
        wanted: dict[int, list[str] | None] = {}
        for i, one in targets:
            if one is None:
                wanted[i] = None
            else:
                channels = wanted.setdefault(i, [])
                assert channels is not None
                channels.append(one)
        batch = Batch(running, self.clock, now)
        failed: list[int] = []
        for i, only in wanted.items():
            try:
                plan = plan_recipient(
                    job, personalizer, self.channels, self.policy, job.recipients[i], now, only=only, released=released
                )
            except Exception:  # a bug met by this recipient's data: its decision, not the job's end
                if not failed:
                    log.exception("job %s: recipient %d could not be planned", running.id, i)
                failed.append(i)
                plan = RecipientPlan(None, {c: _INTERNAL_ERROR for c in (only or job.channels)})
            batch.plans[i] = plan
            for channel, step in plan.channels.items():
                if isinstance(step, Verdict):
                    batch.decide((i, channel), step)
        if len(failed) > 1:
            log.error(
                "job %s: %d recipients could not be planned in this batch (%s): failed: internal_error",
                running.id,
                len(failed),
                ", ".join(map(str, failed[:10])) + (" ..." if len(failed) > 10 else ""),
            )
        return batch

    def _personalizer(self, running: RunningJob) -> Personalizer:
        if running.personalizer is None:
            kinds = {name: c.content_kind for name, c in self.channels.items()}
            running.personalizer = Personalizer(running.job, running.variants, kinds)
        return running.personalizer

    async def deliver(self, batch: Batch, targets: list[Target]) -> None:
        """One routing round: every ready target in `targets` ends with a decision."""
        shares = self.build(batch, targets)
        answers = self.hold(batch, shares)
        granted = await self.reserve(batch, list(answers))
        outgoing: dict[str, list[Delivery]] = {}
        slots: dict[str, list[tuple[Target, int]]] = {}  # where each outgoing answer goes
        for target, _ in granted:
            held = answers[target]
            for k, delivery in enumerate(shares[target]):
                if held[k] is None:
                    outgoing.setdefault(target[1], []).append(delivery)
                    slots.setdefault(target[1], []).append((target, k))
        for name, results in (await self.send(batch, outgoing)).items():
            for (target, k), result in zip(slots[name], results, strict=True):
                answers[target][k] = result
        by_channel: dict[str, list[tuple[Target, list[tuple[Delivery, Answer]]]]] = {}
        for target, _ in granted:
            pairs: list[tuple[Delivery, Answer]] = list(zip(shares[target], answers[target], strict=True))  # type: ignore[arg-type]
            by_channel.setdefault(target[1], []).append((target, pairs))
        for name, folded in by_channel.items():
            self.fold(batch, name, folded)
        await self.refund(batch, granted)

    def build(self, batch: Batch, targets: list[Target]) -> dict[Target, list[Delivery]]:
        """Stage `build`: one Delivery per device, with the id every attempt reuses (its
        last part is the device's index)."""
        running = batch.running
        job = running.job
        plans = batch.plans
        shares: dict[Target, list[Delivery]] = {}
        for target in targets:
            i, name = target
            step = plans[i].channels[name]
            assert isinstance(step, Ready)
            user_id = job.recipients[i].user_id
            shares[target] = [
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
                for k, to in enumerate(step.destinations)
            ]
        return shares

    def hold(self, batch: Batch, shares: dict[Target, list[Delivery]]) -> dict[Target, list[Answer | None]]:
        """Stage `hold`: a delivery whose provider's circuit is open is not attempted
        (Postponed); a target with nothing left to attempt is deferred until the circuit
        lets a probe through. The rest go on, each with its held deliveries marked."""
        answers: dict[Target, list[Answer | None]] = {}
        open_channels = {name for name in {t[1] for t in shares} if self.retrier.any_open(name)}
        for target, deliveries in shares.items():
            if target[1] not in open_channels:  # the usual case: nothing held
                answers[target] = [None] * len(deliveries)
                continue
            channel = self.channels[target[1]]
            held: list[Answer | None] = [self.retrier.held(channel, dv, batch.now) for dv in deliveries]
            if any(h is None for h in held):
                answers[target] = held
                continue
            pairs: list[tuple[Delivery, Answer]] = list(zip(deliveries, held, strict=True))  # type: ignore[arg-type]
            batch.decide(target, fold_devices(target[1], batch.ready(target), pairs))
        return answers

    async def reserve(self, batch: Batch, targets: list[Target]) -> list[tuple[Target, Ready]]:
        """Stage `reserve`: frequency-cap slots for the whole round at once; what a rule
        refuses is decided here (capped, or deferred until a slot frees)."""
        job = batch.running.job
        plans = batch.plans
        steps: list[tuple[Target, Any]] = [(t, plans[t[0]].channels[t[1]]) for t in targets]  # Ready, by routing
        caps_request = self.policy.caps_request
        requests = [caps_request(job, job.recipients[i], name, step.tz, batch.now) for (i, name), step in steps]
        expires = job.expires_at.timestamp() if job.expires_at is not None else None
        granted: list[tuple[Target, Ready]] = []
        for (target, step), outcome in zip(steps, await self.store.reserve_caps(requests, batch.now), strict=True):
            if isinstance(outcome, Denied):
                batch.decide(target, _cap_verdict(outcome, expires, step.flags))
                continue
            step.reservation = outcome.reservation
            granted.append((target, step))
        return granted

    async def send(self, batch: Batch, outgoing: dict[str, list[Delivery]]) -> dict[str, list[Answer]]:
        """Stage `send`: each channel's share through dispatch, the channels side by side."""
        names = [name for name, deliveries in outgoing.items() if deliveries]
        answers = await asyncio.gather(
            *(self.retrier.send(batch.running.id, self.channels[n], outgoing[n]) for n in names)
        )
        return {**{name: [] for name in outgoing}, **dict(zip(names, answers, strict=True))}

    def fold(self, batch: Batch, channel: str, folded: list[tuple[Target, list[tuple[Delivery, Answer]]]]) -> None:
        """Stage `fold`: the devices of one recipient on one channel make one decision."""
        sent = 0
        dead_all: list[Delivery] = []
        plans = batch.plans
        for target, pairs in folded:
            step = plans[target[0]].channels[channel]
            assert isinstance(step, Ready)
            if len(pairs) == 1 and type(pairs[0][1]) is Sent:  # the common case
                batch.sent(target, step)
                sent += 1
                continue
            dead = [delivery for delivery, r in pairs if isinstance(r, InvalidToken)]
            dead_all += dead
            sent += sum(isinstance(r, Sent) for _, r in pairs)
            decision = batch.decide(target, fold_devices(channel, step, pairs))
            decision.invalid_tokens = [token_of(delivery.to) for delivery in dead] or None
        if sent:  # one histogram update per batch: the deliveries share `elapsed`
            elapsed = self.clock.monotonic() - batch.running.accepted_at
            self.metrics.delivery_latency.observe(elapsed, channel, times=sent)
        if dead_all:
            observe(self.pm, "tokens_invalidated", channel=channel, deliveries=dead_all)

    async def refund(self, batch: Batch, granted: list[tuple[Target, Ready]]) -> None:
        """Cap slots of messages that were not delivered do not count."""
        decided = batch.decided
        refunds = [
            step.reservation for target, step in granted if step.reservation and decided[target].outcome != "sent"
        ]
        if refunds:
            await self.store.refund_caps(refunds)

    def outcome(self, batch: Batch, targets: Sequence[tuple[int, str | None]]) -> BatchOutcome:
        """Stage `record`'s input: the decisions in target order, and what is deferred."""
        result = BatchOutcome()
        for i, only in targets:
            for channel in [only] if only is not None else batch.running.job.channels:
                decision = batch.decided[(i, channel)]
                result.decisions.append(decision)
                if decision.outcome == "deferred" and decision.until is not None:
                    item = DeferredItem(batch.running.id, i, channel, decision.until, decision.reason or "")
                    result.deferred.append(item)
        return result


def _cap_verdict(denied: Denied, expires: float | None, flags: list[str] | None) -> Verdict:
    """Capped, or deferred to when a slot frees: only if one ever does (a rule with limit 0
    frees none) and before the job expires. Every deferral ends."""
    if denied.action != "defer":
        return Verdict("capped", denied.rule, flags=flags)
    if denied.free_at == float("inf"):
        return Verdict("capped", denied.rule, "the rule allows none: no slot will free", flags=flags)
    if expires is not None and denied.free_at > expires:
        return Verdict("capped", denied.rule, "no slot frees before expires_at", flags=flags)
    return Verdict("deferred", d.FREQUENCY_CAP, denied.rule, denied.free_at, flags)
