"""The stages one batch goes through, each a method over the batch:

    plan     policy, variant and content per recipient (`plan.py`)
    build    one Delivery per device; answers already recorded are not asked again
    hold     deliveries whose provider's circuit is open: postponed
    reserve  frequency-cap slots, all rules or none per message
    send     a channel's share through dispatch (retries, breaker, in-flight budget)
    fold     device answers into one decision per recipient and channel (`fold.py`)
    refund   cap slots of messages that were not delivered

`run.py` strings them together for a job's batches and for released deferred messages.
The per-recipient work is plain calls over Structs; the awaits are per batch and channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import pluggy

from gateway.channel import Channel
from gateway.clock import Clock
from gateway.dispatch.dispatcher import Dispatcher
from gateway.loader import observe
from gateway.metrics import Metrics
from gateway.model import decision as d
from gateway.model.caps import Denied
from gateway.model.decision import Decision
from gateway.model.delivery import Delivery, InvalidToken, Result, Sent
from gateway.personalize.render import Personalizer
from gateway.pipeline.acks import AckLog
from gateway.pipeline.batch import Batch, BatchOutcome, RunningJob, Target
from gateway.pipeline.events import Subscriptions
from gateway.pipeline.fold import Answer, fold_devices, retry_state, token_of
from gateway.pipeline.plan import Ready, RecipientPlan, Verdict, plan_recipient
from gateway.policy.engine import Policy, cap_verdict
from gateway.store import Store
from gateway.store.base import DeferredItem, with_retry

log = logging.getLogger(__name__)
YIELD_EVERY = 0.005  # seconds of planning between yields to the event loop
_INTERNAL_ERROR = Verdict(
    "failed", d.INTERNAL_ERROR, "the gateway could not plan this recipient; the log has the trace"
)
Share = dict[Target, list[Delivery]]
Answers = dict[Target, list[Answer | None]]


class Stages:
    def __init__(
        self,
        store: Store,
        channels: dict[str, Channel],
        dispatcher: Dispatcher,
        pm: pluggy.PluginManager,
        metrics: Metrics,
        clock: Clock,
        batch_size: int,
        policy: Policy,
        acklog: AckLog | None = None,
    ):
        self.store = store
        self.channels = channels
        self.subscriptions = Subscriptions()  # status callbacks, set from the config by the Gateway
        self.cancelled: set[str] = set()  # jobs a cancel was asked for in this process
        self.dispatcher = dispatcher
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.batch_size = batch_size
        self.policy = policy
        self.acklog = acklog or AckLog(store)

    # -- plan --------------------------------------------------------------------------
    async def plan(self, running: RunningJob, targets: Sequence[tuple[int, str | None]], released: bool) -> Batch:
        """One plan per recipient, for all its targeted channels ((i, None): all the
        job's); what policy or personalization refused is decided here. It yields to the
        event loop every few milliseconds: a batch of costly templates must not stall the
        API or other jobs."""
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
        slice_ends = time.perf_counter() + YIELD_EVERY
        for i, only in wanted.items():
            if time.perf_counter() > slice_ends:
                await asyncio.sleep(0)
                slice_ends = time.perf_counter() + YIELD_EVERY
            try:
                plan = plan_recipient(
                    job,
                    personalizer,
                    self.channels,
                    self.policy,
                    job.recipients[i],
                    now,
                    only=only,
                    released=released,
                    tenant=running.tenant,
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

    # -- build and hold ----------------------------------------------------------------
    def build(self, batch: Batch, targets: list[Target]) -> tuple[Share, Answers]:
        """One Delivery per device, with the id every attempt reuses (its last part is the
        device's index), and its answer where one is known already: recorded before (a
        batch run again) or carried by a released message (its other devices)."""
        running = batch.running
        job = running.job
        acks = running.acks
        shares: Share = {}
        answers: Answers = {}
        for target in targets:
            i, name = target
            step = batch.ready(target)
            carried = batch.carried.get(target)
            user_id = job.recipients[i].user_id
            deliveries = shares[target] = [
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
                    tenant=running.tenant,
                )
                for k, to in enumerate(step.destinations)
            ]
            recorded = acks.get(i) if acks else None
            known: list[Answer | None] = [None] * len(deliveries)
            if recorded is not None or carried is not None:  # a batch run again, a release
                if recorded:
                    known = [recorded.get(dv.id) for dv in deliveries]
                if carried is not None:
                    _carry(carried, deliveries, known)
                batch.prefilled.update(dv.id for dv, a in zip(deliveries, known, strict=True) if a is not None)
            answers[target] = known
        return shares, answers

    def hold(self, batch: Batch, shares: Share, answers: Answers) -> None:
        """Deliveries whose provider's circuit is open are not attempted: postponed, with
        their retry state. A target left with nothing to send is decided now."""
        open_channels = {name for name in {t[1] for t in shares} if self.dispatcher.any_open(name)}
        dispatcher = self.dispatcher
        for target, deliveries in shares.items():
            name = target[1]
            known = answers[target]
            if name in open_channels:
                channel = self.channels[name]
                for k, delivery in enumerate(deliveries):
                    if known[k] is None:
                        known[k] = dispatcher.held(channel, delivery, batch.now)
            if all(a is not None for a in known):
                self.fold(batch, name, [(target, list(zip(deliveries, known, strict=True)))])  # type: ignore[arg-type]

    # -- reserve -------------------------------------------------------------------------
    async def reserve(self, batch: Batch, targets: list[Target]) -> list[tuple[Target, Ready]]:
        """Frequency-cap slots for these targets at once; what a rule refuses is decided
        here (capped, or deferred until a slot frees)."""
        if not targets:
            return []
        job = batch.running.job
        plans = batch.plans
        steps: list[tuple[Target, Any]] = [(t, plans[t[0]].channels[t[1]]) for t in targets]  # Ready, by routing
        caps_request = self.policy.caps_request
        tenant = batch.running.tenant
        requests = [caps_request(job, job.recipients[i], name, step.tz, batch.now, tenant) for (i, name), step in steps]
        expires = job.expires_at.timestamp() if job.expires_at is not None else None
        granted: list[tuple[Target, Ready]] = []
        for (target, step), outcome in zip(steps, await self.store.reserve_caps(requests, batch.now), strict=True):
            if isinstance(outcome, Denied):
                batch.decide(target, cap_verdict(outcome, expires, step.flags))
                continue
            step.reservation = outcome.reservation
            granted.append((target, step))
        return granted

    async def refund(self, batch: Batch, granted: list[tuple[Target, Ready]]) -> None:
        """Cap slots of messages that were not delivered do not count."""
        decided = batch.decided
        refunds = [
            step.reservation for target, step in granted if step.reservation and decided[target].outcome != "sent"
        ]
        if refunds:
            await self.store.refund_caps(refunds)

    # -- send and fold -------------------------------------------------------------------
    async def send(self, batch: Batch, name: str, targets: list[Target], shares: Share, answers: Answers) -> None:
        """One channel's share: the deliveries without an answer go through dispatch;
        each target then gets its decision."""
        running = batch.running
        outgoing: list[Delivery] = []
        slots: list[tuple[Target, int]] = []
        for target in targets:
            for k, answer in enumerate(answers[target]):
                if answer is None:
                    outgoing.append(shares[target][k])
                    slots.append((target, k))
        if outgoing:
            acks = running.acks
            acklog = self.acklog

            def answered(delivery: Delivery, result: Result) -> None:
                acks.setdefault(delivery.recipient, {})[delivery.id] = result
                acklog.add(running.id, delivery, result)

            results = await self.dispatcher.send(self.channels[name], outgoing, answered)
            for (target, k), result in zip(slots, results, strict=True):
                answers[target][k] = result
        self.fold(batch, name, [(t, list(zip(shares[t], answers[t], strict=True))) for t in targets])  # type: ignore[arg-type]

    def fold(self, batch: Batch, channel: str, folded: list[tuple[Target, list[tuple[Delivery, Answer]]]]) -> None:
        """The devices of one recipient on one channel make one decision."""
        sent = 0
        dead_all: list[Delivery] = []
        plans = batch.plans
        job = batch.running.job
        expires = job.expires_at.timestamp() if job.expires_at is not None else None
        prefilled = batch.prefilled
        for target, pairs in folded:
            step = plans[target[0]].channels[channel]
            assert isinstance(step, Ready)
            if len(pairs) == 1 and type(pairs[0][1]) is Sent:  # the common case
                batch.sent(target, step)
                sent += 1
                continue
            dead = [delivery for delivery, r in pairs if isinstance(r, InvalidToken)]
            dead_all += [delivery for delivery in dead if delivery.id not in prefilled]
            sent += sum(isinstance(r, Sent) for _, r in pairs)
            verdict = fold_devices(channel, step, pairs, expires)
            decision = batch.decide(target, verdict)
            if verdict.outcome == "deferred":
                batch.retry[target] = retry_state(pairs)
            else:
                decision.invalid_tokens = [token_of(delivery.to) for delivery in dead] or None
        if sent:  # one histogram update per batch: the deliveries share `elapsed`
            elapsed = self.clock.monotonic() - batch.running.accepted_at
            self.metrics.delivery_latency.observe(elapsed, channel, times=sent)
            self.metrics.history.add(channel, sent, elapsed * sent)
        if dead_all:
            observe(self.pm, "tokens_invalidated", channel=channel, deliveries=dead_all)

    # -- routing rounds (all channels of a target list at once) --------------------------
    async def deliver(self, batch: Batch, targets: list[Target]) -> None:
        """One routing round: every ready target in `targets` ends with a decision. Used
        by routing `first` and by released messages; `run.py` sends a job's batches
        channel by channel instead."""
        shares, answers = self.build(batch, targets)
        self.hold(batch, shares, answers)
        granted = await self.reserve(batch, [t for t in targets if t not in batch.decided])
        by_channel: dict[str, list[Target]] = {}
        for target, _ in granted:
            by_channel.setdefault(target[1], []).append(target)
        await asyncio.gather(*(self.send(batch, n, ts, shares, answers) for n, ts in by_channel.items()))
        await self.refund(batch, granted)

    def outcome(self, batch: Batch, targets: Sequence[tuple[int, str | None]]) -> BatchOutcome:
        """What a record takes: the decisions in target order, and what is deferred (with
        its retry state when dispatch deferred it)."""
        result = BatchOutcome()
        job_id = batch.running.id
        channels = batch.running.job.channels
        carried = batch.carried
        for i, only in targets:
            for channel in [only] if only is not None else channels:
                decision = batch.decided[(i, channel)]
                if carried and (released := carried.get((i, channel))) is not None:
                    decision.history = released.as_earlier()  # deferred before: kept, not overwritten
                result.decisions.append(decision)
                if decision.outcome == "deferred" and decision.until is not None:
                    result.deferred.append(deferred_item(batch, job_id, (i, channel), decision))
        return result


def deferred_item(batch: Batch, job_id: str, target: Target, decision: Decision) -> DeferredItem:
    """The store's item for a deferred decision: its retry state, and what the decision
    was, for the history of the one its release makes."""
    assert decision.until is not None
    item = DeferredItem(
        job_id,
        target[0],
        target[1],
        decision.until,
        decision.reason or "",
        detail=decision.detail,
        deferred_at=decision.at,
        history=decision.history,
    )
    state = batch.retry.get(target)
    return item if state is None else with_retry(item, state)


def _carry(item: DeferredItem, deliveries: list[Delivery], known: list[Answer | None]) -> None:
    """A released message goes on from its retry state: the count and first attempt, and
    the answers its other devices gave."""
    for delivery in deliveries:
        delivery.attempt = item.attempts + 1
        delivery.first_attempt = item.first_attempt
    if item.devices is None:
        return
    waiting = set(item.devices)
    carried = item.answers or {}
    for k in range(len(deliveries)):
        if k not in waiting and known[k] is None and k in carried:
            known[k] = carried[k]
