"""Releasing deferred messages when they come due.

Deferred messages live in the store with their due time. The scheduler claims due ones in
batches (with a lease: a claim a crashed process never settles comes back), runs them
through the pipeline again (policy is checked anew: a cap may have filled meanwhile, or
the job expired) and settles each job's share in one store write.

Releases run side by side: per job and channel, each claim's groups at once, and a new
claim every poll while earlier ones are still sending, so messages due on a healthy
channel never wait behind a provider that hangs. A channel with `RELEASES_PER_CHANNEL`
releases already under way gets its due messages deferred again for a moment
(`provider_busy`) instead of one more release waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict

import msgspec

from gateway.clock import Clock
from gateway.config import ScheduleConfig, seconds
from gateway.pipeline import Pipeline, RunningJob, load_job
from gateway.store import DeferredItem, Store

log = logging.getLogger(__name__)
RELEASES_PER_CHANNEL = 4  # releases of one channel under way at once
CLAIMS_AT_ONCE = 8  # claims whose releases are still under way, at most


class Scheduler:
    def __init__(self, store: Store, pipeline: Pipeline, config: ScheduleConfig, clock: Clock, cache_size: int = 64):
        self.store = store
        self.pipeline = pipeline
        self.clock = clock
        self.poll = seconds(config.poll_interval)
        self.lease = seconds(config.lease)
        self.batch_size = config.batch_size
        self._jobs: OrderedDict[str, RunningJob] = OrderedDict()
        self._cache_size = cache_size
        self._under_way: dict[str, int] = defaultdict(int)  # channel -> releases sending

    async def run_due(self) -> int:
        """Release what is due now, and wait for it; return how many messages were claimed."""
        items = await self.store.claim_due(self.clock.now(), self.batch_size, self.lease)
        await self._release_all(items)
        return len(items)

    async def _release_all(self, items: list[DeferredItem]) -> None:
        groups: dict[tuple[str, str], list[DeferredItem]] = defaultdict(list)
        for item in items:
            groups[(item.job_id, item.channel)].append(item)
        results = await asyncio.gather(
            *(self._release(job_id, channel, group) for (job_id, channel), group in groups.items()),
            return_exceptions=True,
        )
        for (job_id, channel), result in zip(groups, results, strict=True):
            if isinstance(result, Exception):  # its claims return after their lease
                log.error("releasing %s messages of job %s: %r", channel, job_id, result, exc_info=result)

    async def _release(self, job_id: str, channel: str, items: list[DeferredItem]) -> None:
        running = await self._job(job_id)
        if await self._cancelled(running):  # cancelled since they were deferred: they never go
            await self.pipeline.cancel_deferred(running, items)
            return
        if self._under_way[channel] >= RELEASES_PER_CHANNEL:
            await self._busy(running, items)
            return
        self._under_way[channel] += 1
        try:
            outcome = await self.pipeline.release(running, items)
        finally:
            self._under_way[channel] -= 1
        now = self.clock.now()
        outbox = self.pipeline.subscriptions.outbox(running, outcome.decisions, now)
        await self.store.settle_deferred(
            job_id, outcome.decisions, outcome.deferred, now, channels=running.job.channels, outbox=outbox
        )

    async def _busy(self, running: RunningJob, items: list[DeferredItem]) -> None:
        """Deferred again for a moment: their channel's releases are all under way."""
        until = self.pipeline.dispatcher.policy.busy_until(self.clock.now())
        again = [msgspec.structs.replace(item, due=until) for item in items]
        await self.store.settle_deferred(running.id, [], again, self.clock.now(), channels=running.job.channels)

    async def _cancelled(self, running: RunningJob) -> bool:
        """Asked for in this process, or in any (the store says; one read per release)."""
        if running.id in self.pipeline.cancelled:
            return True
        record = await self.store.get_job(running.id)
        return record is not None and record.cancelled_at is not None

    def forget(self, job_ids: list[str]) -> None:
        """Their stored bodies changed: load them again when next due."""
        for job_id in job_ids:
            self._jobs.pop(job_id, None)

    async def _job(self, job_id: str) -> RunningJob:
        running = self._jobs.get(job_id)
        if running is None:
            running = await load_job(self.store, job_id, 0, self.clock.monotonic())
            running.cursor = len(running.job.recipients)
            self._jobs[job_id] = running
            if len(self._jobs) > self._cache_size:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job_id)
        return running

    async def loop(self) -> None:
        """Claim every poll (at once again after a full claim), without waiting for earlier
        claims' releases to end, up to `CLAIMS_AT_ONCE` of them."""
        under_way: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(under_way) >= CLAIMS_AT_ONCE:
                    await asyncio.wait(under_way, return_when=asyncio.FIRST_COMPLETED)
                try:
                    items = await self.store.claim_due(self.clock.now(), self.batch_size, self.lease)
                except Exception as exc:  # the store: try again later
                    log.warning("claiming due deferred messages: %s", exc)
                    items = []
                if items:
                    task = asyncio.create_task(self._release_all(items))
                    under_way.add(task)
                    task.add_done_callback(under_way.discard)
                if len(items) < self.batch_size:
                    await self.clock.sleep(self.poll)
        finally:
            for task in under_way:
                task.cancel()
            await asyncio.gather(*under_way, return_exceptions=True)
