"""A job, batch by batch, and deferred messages coming due (the stages are in `stages.py`).

A job's batches are pipelined within its window (`window.py`): the next is planned and
sent while earlier ones wait for answers. Routing `all` sends each channel's share of a
batch on its own and records that channel's decisions as soon as they are made, so a
slow provider holds up neither the other channels' decisions nor the next batch's; the
stored cursor moves once every channel of a run of batches is recorded. Routing `first`
walks its ladder per batch and records the batch at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.loader import observe
from gateway.model import decision as d
from gateway.model.decision import Decision
from gateway.model.job import JOB_DECODER
from gateway.personalize.templates import compile_job
from gateway.pipeline.batch import Batch, BatchOutcome, RunningJob, Target
from gateway.pipeline.routing import ready_targets, route_all, route_first
from gateway.pipeline.stages import Answers, Share, Stages, deferred_item
from gateway.pipeline.window import Span, Window
from gateway.store import JobRecord, Store
from gateway.store.base import DeferredItem

log = logging.getLogger(__name__)


async def load_job(
    store: Store, job_id: str, cursor: int, accepted_at: float, record: JobRecord | None = None
) -> RunningJob:
    """A stored job, ready to run again (resumed at start-up, taken over, or deferred
    messages due): decoded from its stored body, templates compiled once more (they were
    validated at intake, so no length limit applies here), with the providers' answers
    recorded since its cursor."""
    job = JOB_DECODER.decode(await store.job_body(job_id))
    if record is None:  # whose job (opt-outs and caps are per tenant), and is it cancelled?
        record = await store.get_job(job_id)
    running = RunningJob(job_id, job, compile_job(job, max_template_chars=10**9), cursor, accepted_at)
    if record is not None:
        running.tenant, running.cancelled = record.tenant, record.cancelled_at is not None
    running.acks = await store.acks(job_id)
    return running


def every_channel(
    running: RunningJob, recipients: range, outcome: d.Outcome, reason: str, detail: str, at: float
) -> list[Decision]:
    """The same decision for these recipients on every channel of the job (the rest of a job
    given up on, or cancelled)."""
    users = running.job.recipients
    return [
        Decision(
            recipient=i, user_id=users[i].user_id, channel=channel, outcome=outcome, reason=reason, detail=detail, at=at
        )
        for i in recipients
        for channel in running.job.channels
    ]


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


class Pipeline(Stages):
    # -- jobs ------------------------------------------------------------------------
    async def run(self, running: RunningJob, stopping: asyncio.Event | None = None) -> bool:
        """Process the job from its cursor. Returns False when stopped early (the rest
        resumes from the stored cursor on the next start). A batch that fails (the store
        unreachable, a bug) stops the job once the batches under way have ended; it goes
        on from the stored cursor, and what was answered meanwhile is not sent again."""
        job = running.job
        n = len(job.recipients)
        if running.cancelled or running.id in self.cancelled:
            return await self._end_cancelled(running, running.cursor)
        window = Window(running.cursor, self._budgets(running), self.batch_size, job.routing != "first")
        stopped = stopping is not None and stopping.is_set()
        if 0 < n - running.cursor <= self.batch_size and not stopped:  # one batch (transactional): no task
            await self._batch(running, window, window.start(running.cursor, n))
            return await self._finished(running)
        tasks: list[asyncio.Task[None]] = []
        lo = running.cursor
        try:
            while lo < n and not (stopping is not None and stopping.is_set()):
                await window.room()
                if any(map(_failed, tasks)) or await self._cancel_asked(running):
                    break
                span = window.start(lo, min(lo + self.batch_size, n))
                task = asyncio.create_task(self._batch(running, window, span))
                task.add_done_callback(window.ended(span))
                tasks = [t for t in tasks if not t.done() or _failed(t)] + [task]
                await span.admitted.wait()
                lo = span.hi
        except asyncio.CancelledError:  # shut down past its timeout: the batches too
            for task in tasks:
                task.cancel()
            raise
        finally:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if running.cancelled:  # every batch started is recorded: the rest was never planned
            return await self._end_cancelled(running, lo)
        return await self._finished(running)

    async def _cancel_asked(self, running: RunningJob) -> bool:
        """Before each batch of a job of several: was a cancel asked for, here or (through
        the store) in another process?"""
        if not running.cancelled and running.id not in self.cancelled:
            record = await self.store.get_job(running.id)
            running.cancelled = record is not None and record.cancelled_at is not None
        running.cancelled = running.cancelled or running.id in self.cancelled
        return running.cancelled

    async def _end_cancelled(self, running: RunningJob, start: int) -> bool:
        """Recipients from `start` on get `suppressed: cancelled` on every channel, a batch
        at a time; then the messages waiting in the schedule; the job ends `cancelled`."""
        job, n = running.job, len(running.job.recipients)
        for lo in range(start, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            now = self.clock.now()
            decisions = every_channel(running, range(lo, hi), "suppressed", d.CANCELLED, "the job was cancelled", now)
            outbox = self.subscriptions.outbox(running, decisions, now)
            await self.store.record_batch(
                running.id, hi, decisions, now, channels=job.channels, finish=hi == n, outbox=outbox
            )
            self._observe(running, decisions)
        if start >= n and not running.finished:
            now = self.clock.now()
            await self.store.finish_job(running.id, now, self.subscriptions.outbox(running, [], now))
        running.cursor, running.finished = n, True
        await self.cancel_deferred(running)
        self.cancelled.discard(running.id)
        self.acklog.forget(running.id)
        log.info(
            "job %s cancelled: campaign %s, %d recipients; %s",
            running.id,
            job.campaign,
            n,
            ", ".join(f"{outcome} {k}" for outcome, k in sorted(running.counts.items())) or "no decisions",
            extra={"event": "job.cancelled", "job_id": running.id, "campaign": job.campaign, "counts": running.counts},
        )
        return True

    async def cancel_deferred(self, running: RunningJob, items: Sequence[DeferredItem] | None = None) -> None:
        """The job's messages waiting in the schedule (or these of them) are settled as
        `suppressed: cancelled`, keeping their deferral in their history."""
        if items is None:
            items = await self.store.deferred_of(running.id)
        if not items:
            return
        now = self.clock.now()
        recipients = running.job.recipients
        decisions = [
            Decision(recipient=item.recipient, user_id=recipients[item.recipient].user_id, channel=item.channel,
                     outcome="suppressed", reason=d.CANCELLED, detail="the job was cancelled", at=now,
                     history=item.as_earlier())
            for item in items
        ]  # fmt: skip
        outbox = self.subscriptions.outbox(running, decisions, now)
        await self.store.settle_deferred(running.id, decisions, [], now, channels=running.job.channels, outbox=outbox)
        self._observe(running, decisions)

    async def _finished(self, running: RunningJob) -> bool:
        """Every batch has ended: True when the job is done (closed by its last record, or
        here), False when it stopped early."""
        if running.cursor < len(running.job.recipients):
            return False
        self.acklog.forget(running.id)
        self.cancelled.discard(running.id)
        if not running.finished:
            now = self.clock.now()
            await self.store.finish_job(running.id, now, self.subscriptions.outbox(running, [], now))
        self._log_end(running)
        return True

    def _log_end(self, running: RunningJob) -> None:
        """One line per job: what happened to its recipients (in this run: a resumed job
        counts from where it resumed) and how long it took."""
        counts = running.counts
        deferred = counts.get("deferred", 0)
        took = self.clock.monotonic() - running.accepted_at
        log.info(
            "job %s %s in %.3fs: campaign %s, %d recipients; %s",
            running.id,
            f"decided, {deferred} message(s) deferred" if deferred else "completed",
            took,
            running.job.campaign,
            len(running.job.recipients),
            ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items())) or "no decisions",
            extra={
                "event": "job.waiting" if deferred else "job.completed",
                "job_id": running.id,
                "campaign": running.job.campaign,
                "recipients": len(running.job.recipients),
                "counts": dict(counts),
                "duration_s": round(took, 6),
            },
        )

    def _budgets(self, running: RunningJob) -> dict[str, int]:
        """How many deliveries each of the job's channels keeps in flight: the core's
        budget, or the channel's own limit when lower (the sizes of the job's lanes)."""
        budgets = {}
        for name in running.job.channels:
            channel = self.channels.get(name)
            if channel is not None:
                own = channel.max_in_flight()
                limit = self.dispatcher.budget(channel).limit
                budgets[name] = min(limit, own) if own else limit
        return budgets

    async def _batch(self, running: RunningJob, window: Window, span: Span) -> None:
        targets: list[tuple[int, str | None]] = [(i, None) for i in range(span.lo, span.hi)]
        batch = await self.plan(running, targets, released=False)
        if running.job.routing != "first":
            await self._by_channel(batch, window, span)
            return
        span.admitted.set()
        try:
            await window.after_earlier_with(span, running.job.recipients)
            await route_first(batch, running.job.channels, self.deliver)
        finally:
            span.routed.set()
        outcome = self.outcome(batch, targets)
        span.unissued = 1
        await self._record(batch, window, span, outcome.decisions, outcome.deferred, self._sent_ids(batch))

    async def _by_channel(self, batch: Batch, window: Window, span: Span) -> None:
        """Routing `all`: each channel's share sent and recorded on its own."""
        targets = ready_targets(batch)
        shares, answers = self.build(batch, targets)
        self.hold(batch, shares, answers)
        entered = {t[1] for t in targets if None in answers[t]}
        for name in entered:
            window.enter(name)
        span.admitted.set()
        try:
            granted = await self.reserve(batch, [t for t in targets if t not in batch.decided])
        except BaseException:
            for name in entered:
                window.leave(name)
            raise
        sending: dict[str, list[Target]] = {}
        for target, _ in granted:
            sending.setdefault(target[1], []).append(target)
        for name in entered - sending.keys():
            window.leave(name)
        quiet = [name for name in batch.running.job.channels if name not in sending]
        span.unissued = len(sending) + bool(quiet)
        writes = [self._channel(batch, window, span, name, ts, shares, answers) for name, ts in sending.items()]
        if quiet:
            writes.append(self._record(batch, window, span, *self._decided_on(batch, quiet), []))
        if len(writes) == 1:  # one channel: no gather
            await writes[0]
        else:
            await asyncio.gather(*writes)
        await self.refund(batch, granted)

    async def _channel(
        self,
        batch: Batch,
        window: Window,
        span: Span,
        name: str,
        targets: list[Target],
        shares: Share,
        answers: Answers,
    ) -> None:
        """One channel's share of a batch: sent, then its decisions recorded."""
        try:
            await self.send(batch, name, targets, shares, answers)
        finally:
            window.leave(name)
        ids = [delivery.id for target in targets for delivery in shares[target]]
        await self._record(batch, window, span, *self._decided_on(batch, [name]), ids)

    def _decided_on(self, batch: Batch, channels: list[str]) -> tuple[list[Decision], list[DeferredItem]]:
        """The batch's decisions on these channels (every recipient has one on each), and
        its deferred messages among them."""
        decisions: list[Decision] = []
        deferred: list[DeferredItem] = []
        job_id = batch.running.id
        decided = batch.decided
        for i in batch.plans:
            for name in channels:
                decision = decided[(i, name)]
                decisions.append(decision)
                if decision.outcome == "deferred" and decision.until is not None:
                    deferred.append(deferred_item(batch, job_id, (i, name), decision))
        return decisions, deferred

    @staticmethod
    def _sent_ids(batch: Batch) -> list[str]:
        running = batch.running
        return [delivery_id for i in batch.plans for delivery_id in running.acks.get(i, ())]

    async def _record(
        self,
        batch: Batch,
        window: Window,
        span: Span,
        decisions: list[Decision],
        deferred: list[DeferredItem],
        ids: Sequence[str],
    ) -> None:
        """One record write of a batch. The last one carries the cursor when every earlier
        batch is recorded (else a later write moves it); answers it covers are then not
        written on their own."""
        running = batch.running
        span.unissued -= 1
        cursor = window.cursor_with(span) if span.unissued == 0 and span.inflight == 0 else -1
        if cursor >= 0:
            self.acklog.drop(running.id, ids)
        span.inflight += 1
        n = len(running.job.recipients)
        # The job's last record closes it in the same write (a job of one batch makes two
        # writes in all: accepted, and decided).
        last = cursor == n
        now = self.clock.now()
        try:
            await self.store.record_batch(
                running.id,
                cursor,
                decisions,
                now,
                deferred,
                running.job.channels,
                finish=last,
                outbox=self.subscriptions.outbox(running, decisions, now),
            )
        finally:
            span.inflight -= 1
        running.finished = last
        self._stored(running, window, cursor)
        self._observe(running, decisions)
        if span.unissued == 0 and span.inflight == 0:
            reach, passed = window.complete(span)
            if reach > window.cursor:
                now = self.clock.now()
                outbox = self.subscriptions.outbox(running, [], now) if reach == n else None
                await self.store.record_batch(running.id, reach, [], now, finish=reach == n, outbox=outbox)
                running.finished = reach == n
                self._stored(running, window, reach)
            for done in passed:  # their decisions hold what their answers said
                for i in range(done.lo, done.hi):
                    running.acks.pop(i, None)

    @staticmethod
    def _stored(running: RunningJob, window: Window, cursor: int) -> None:
        if cursor > window.cursor:
            window.cursor = running.cursor = cursor

    async def give_up(self, running: RunningJob, why: str) -> None:
        """Finish a job that keeps failing at its cursor: every recipient from there on is
        `failed: internal_error` (the log has the traces), so the job ends instead of
        failing at every restart."""
        job = running.job
        at = self.clock.now()
        decisions = every_channel(
            running, range(running.cursor, len(job.recipients)), "failed", d.INTERNAL_ERROR, why, at
        )
        log.error(
            "job %s: %s; recipients %d-%d are failed: internal_error",
            running.id,
            why,
            running.cursor,
            len(job.recipients) - 1,
        )
        outbox = self.subscriptions.outbox(running, decisions, at)
        await self.store.record_batch(
            running.id, len(job.recipients), decisions, at, channels=job.channels, finish=True, outbox=outbox
        )
        running.cursor = len(job.recipients)
        running.finished = True
        self._observe(running, decisions)

    # -- deferred messages coming due ---------------------------------------------------
    async def release(self, running: RunningJob, items: Sequence[DeferredItem]) -> BatchOutcome:
        """Deferred messages coming due: policy again (a cap may have filled, quiet hours
        may still hold), then sent, each going on from its retry state. With routing
        `first`, a recipient whose released channel ends without reaching them (failed,
        capped, expired) goes on down the ladder."""
        targets = [(item.recipient, item.channel) for item in items]
        batch = await self.plan(running, targets, released=True)
        batch.carried = {(item.recipient, item.channel): item for item in items}
        await route_all(batch, running.job.channels, self.deliver)
        outcome = self.outcome(batch, targets)
        if running.job.routing == "first":
            await self._down_the_ladder(running, batch, targets, outcome)
        self._observe(running, outcome.decisions)
        return outcome

    async def _down_the_ladder(
        self, running: RunningJob, batch: Batch, targets: list[tuple[int, str]], outcome: BatchOutcome
    ) -> None:
        channels = running.job.channels
        rest: dict[int, list[str]] = {}
        for i, name in targets:
            if batch.decided[(i, name)].outcome in ("sent", "deferred") or name not in channels:
                continue
            later = channels[channels.index(name) + 1 :]
            if later:
                rest[i] = later
        for ladder_rest in {tuple(v) for v in rest.values()}:
            again: list[tuple[int, str | None]] = [
                (i, c) for i, v in rest.items() if tuple(v) == ladder_rest for c in ladder_rest
            ]
            ladder = await self.plan(running, again, released=False)
            await route_first(ladder, list(ladder_rest), self.deliver)
            more = self.outcome(ladder, again)
            outcome.decisions += more.decisions
            outcome.deferred += more.deferred

    def _observe(self, running: RunningJob, decisions: list[Decision]) -> None:
        if not decisions:
            return
        channels = self.channels
        counts = running.counts
        for decision in decisions:
            counts[decision.outcome] = counts.get(decision.outcome, 0) + 1
            # A label per configured channel only: jobs may name any channel, and each new
            # name would be another time series on /metrics.
            label = decision.channel if decision.channel in channels else "other"
            self.metrics.decisions.inc(label, decision.outcome)
        observe(self.pm, "decisions_recorded", job_id=running.id, decisions=decisions)
