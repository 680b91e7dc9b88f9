"""Accepted jobs waiting for a worker, with a bound on what is held in memory.

`Admission` counts recipients accepted and not yet decided. Intake asks it before storing a
job and answers 429 when the bound would be passed, so memory stays bounded whatever
upstream sends. A fixed pool of workers runs jobs; each job is processed batch by batch.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.clock import Clock
from gateway.pipeline import Pipeline, RunningJob, load_job
from gateway.store import JobRecord, StoreUnavailable

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0

    def try_acquire(self, recipients: int) -> bool:
        # A job larger than the whole bound is still admitted when nothing else is in
        # flight; otherwise it could never run.
        if self.inflight and self.inflight + recipients > self.limit:
            return False
        self.inflight += recipients
        return True

    def force(self, recipients: int) -> None:
        """Resumed jobs were accepted before the restart: they are admitted regardless."""
        self.inflight += recipients

    def release(self, recipients: int) -> None:
        self.inflight = max(0, self.inflight - recipients)


class Runner:
    """Workers running jobs: jobs just accepted (decoded already) and stored jobs (resumed,
    taken from a shared queue, taken over), which a worker loads when it starts them so a
    queue of them holds no bodies in memory."""

    def __init__(self, pipeline: Pipeline, admission: Admission, workers: int, clock: Clock):
        self.pipeline = pipeline
        self.admission = admission
        self.clock = clock
        self.queue: asyncio.Queue[RunningJob | JobRecord] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self._workers = [asyncio.create_task(self._work(n), name=f"job-worker-{n}") for n in range(workers)]
        self.active: dict[str, RunningJob | JobRecord] = {}
        self._queued: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self._changed = asyncio.Event()

    def submit(self, item: RunningJob | JobRecord) -> None:
        """A job just accepted (decoded), or a stored one (loaded when a worker starts it)."""
        self.idle.clear()
        self._queued.add(item.id)
        self.queue.put_nowait(item)

    def has(self, job_id: str) -> bool:
        """Queued or running here."""
        return job_id in self._queued or job_id in self.active

    @property
    def load(self) -> int:
        """Jobs running or waiting for a worker."""
        return len(self.active) + self.queue.qsize()

    async def wait_for_change(self, timeout: float = 1.0) -> None:
        """Until a job finishes (or `timeout`)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _work(self, n: int) -> None:
        while True:
            item = await self.queue.get()
            self._queued.discard(item.id)
            self.active[item.id] = item
            held = (item.recipients if isinstance(item, JobRecord) else len(item.job.recipients)) - item.cursor
            try:
                await self._run(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # the job stays in the store at its cursor; retried on restart
                log.exception("job %s failed; it resumes from its stored cursor on the next start", item.id)
            finally:
                self.admission.release(held)
                del self.active[item.id]
                self.queue.task_done()
                self._changed.set()
                if not self.active and self.queue.empty():
                    self.idle.set()

    async def _run(self, item: RunningJob | JobRecord) -> None:
        """Run a job; while the store is unreachable, pause and go on from the last recorded
        batch (a batch sent but not recorded goes again with the same delivery ids)."""
        pause = 0.5
        while True:
            try:
                if isinstance(item, JobRecord):
                    item = await load_job(self.pipeline.store, item.id, item.cursor, self.clock.monotonic())
                    self.active[item.id] = item
                await self.pipeline.run(item, self.stopping)
                return
            except StoreUnavailable as exc:
                if self.stopping.is_set():
                    raise
                log.warning(
                    "job %s paused at recipient %d: store unavailable (%s); retrying in %.1fs",
                    item.id,
                    item.cursor,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def stop(self, timeout: float) -> None:
        """Stop taking new batches; let batches under way finish and record, up to
        `timeout`. Whatever is left resumes from the store on the next start."""
        self.stopping.set()
        while not self.queue.empty():  # not started: they stay in the store as accepted
            self._queued.discard(self.queue.get_nowait().id)
            self.queue.task_done()
        if self.active:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "shutdown: %d job(s) still delivering after %.0fs; they resume on restart",
                    len(self.active),
                    timeout,
                )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
