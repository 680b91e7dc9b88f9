"""Releasing deferred messages when they come due.

Deferred messages live in the store with their due time. The scheduler claims due ones in
batches (with a lease: a claim a crashed process never settles comes back), runs them
through the pipeline again (policy is checked anew: a cap may have filled meanwhile, or
the job expired), and settles the batch in one store write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict

from gateway.clock import Clock
from gateway.config import ScheduleConfig, seconds
from gateway.pipeline import Pipeline, RunningJob, load_job
from gateway.store import DeferredItem, Store

log = logging.getLogger(__name__)


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

    async def run_due(self) -> int:
        """Release what is due now; return how many messages were handled."""
        items = await self.store.claim_due(self.clock.now(), self.batch_size, self.lease)
        by_job: dict[str, list[DeferredItem]] = defaultdict(list)
        for item in items:
            by_job[item.job_id].append(item)
        for job_id, job_items in by_job.items():
            running = await self._job(job_id)
            outcome = await self.pipeline.release(running, job_items)
            await self.store.settle_deferred(job_id, outcome.decisions, outcome.deferred, self.clock.now())
        return len(items)

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
        while True:
            try:
                handled = await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the claims return after their lease; try again later
                log.exception("releasing deferred messages")
                handled = 0
            if handled < self.batch_size:
                await self.clock.sleep(self.poll)
