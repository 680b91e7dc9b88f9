"""Accepted jobs waiting for a worker, with a bound on what is held in memory.

`Admission` counts recipients accepted and not yet decided. Intake asks it before storing a
job and answers 429 when the bound would be passed, so memory stays bounded whatever
upstream sends. A fixed pool of workers runs jobs; each job is processed batch by batch.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.pipeline import Pipeline, RunningJob
from gateway.store import StoreUnavailable

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
    def __init__(self, pipeline: Pipeline, admission: Admission, workers: int):
        self.pipeline = pipeline
        self.admission = admission
        self.queue: asyncio.Queue[RunningJob] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self._workers = [asyncio.create_task(self._work(n), name=f"job-worker-{n}") for n in range(workers)]
        self.active: dict[str, RunningJob] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(self, running: RunningJob) -> None:
        self.idle.clear()
        self.queue.put_nowait(running)

    async def _work(self, n: int) -> None:
        while True:
            running = await self.queue.get()
            self.active[running.id] = running
            start = running.cursor
            try:
                await self._run(running)
            except asyncio.CancelledError:
                raise
            except Exception:  # the job stays in the store at its cursor; retried on restart
                log.exception("job %s failed at recipient %d; it resumes on the next start", running.id,
                              running.cursor)
            finally:
                self.admission.release(len(running.job.recipients) - start)
                del self.active[running.id]
                self.queue.task_done()
                if not self.active and self.queue.empty():
                    self.idle.set()

    async def _run(self, running: RunningJob) -> None:
        """Run a job; while the store is unreachable, pause and go on from the last recorded
        batch (a batch sent but not recorded goes again with the same delivery ids)."""
        pause = 0.5
        while True:
            try:
                await self.pipeline.run(running, self.stopping)
                return
            except StoreUnavailable as exc:
                if self.stopping.is_set():
                    raise
                log.warning("job %s paused at recipient %d: store unavailable (%s); retrying in %.1fs",
                            running.id, running.cursor, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def stop(self, timeout: float) -> None:
        """Stop taking new batches; let batches under way finish and record, up to
        `timeout`. Whatever is left resumes from the store on the next start."""
        self.stopping.set()
        while not self.queue.empty():  # not started: they stay in the store as accepted
            self.queue.get_nowait()
            self.queue.task_done()
        if self.active:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except TimeoutError:
                log.warning("shutdown: %d job(s) still delivering after %.0fs; they resume on restart",
                            len(self.active), timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
