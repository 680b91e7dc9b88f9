"""Accepted jobs waiting for a worker, with a bound on what is held in memory.

`Admission` counts recipients accepted and not yet decided. Intake asks it before storing a
job and answers 429 when the bound would be passed, so memory stays bounded whatever
upstream sends. A fixed pool of workers runs jobs; each job is processed batch by batch.
Jobs of one batch have workers of their own: they mostly wait (two commits and a provider's
answer), and behind jobs of many batches they would wait for those too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from gateway.clock import Clock
from gateway.pipeline import Pipeline, RunningJob, load_job
from gateway.store import JobRecord, StoreUnavailable

log = logging.getLogger(__name__)
# A job failing at the same recipient again and again is finished, not retried forever:
# after this many failures of its worker there, or this many starts there (a process that
# died there each time: a kill -9 in mid-batch counts once, a job that crashes it every time).
RETRIES_BEFORE_GIVING_UP = 2
RESUMES_BEFORE_GIVING_UP = 3


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

    def __init__(
        self, pipeline: Pipeline, admission: Admission, workers: int, clock: Clock, small_job_workers: int = 0
    ):
        self.pipeline = pipeline
        self.admission = admission
        self.clock = clock
        self.queue: asyncio.Queue[RunningJob | JobRecord] = asyncio.Queue()
        self.small: asyncio.Queue[RunningJob | JobRecord] = asyncio.Queue() if small_job_workers else self.queue
        self.stopping = asyncio.Event()
        self._workers = [
            asyncio.create_task(self._work(self.queue), name=f"job-worker-{n}") for n in range(workers)
        ] + [
            asyncio.create_task(self._work(self.small), name=f"small-job-worker-{n}") for n in range(small_job_workers)
        ]
        self.active: dict[str, RunningJob | JobRecord] = {}
        # Waiting for a worker, oldest first: since when. An OrderedDict: a dict whose front
        # entries are deleted one by one makes finding its first entry ever slower.
        self._queued: OrderedDict[str, float] = OrderedDict()
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._again: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self._changed = asyncio.Event()
        self._lanes = (workers, small_job_workers)
        self._small_load = 0  # jobs of one batch running or waiting in their own lane

    def submit(self, item: RunningJob | JobRecord, again: bool = False) -> None:
        """A job just accepted (decoded), or a stored one (loaded when a worker starts it).
        `again`: it ran before and did not finish (resumed after a stop or a crash, taken
        over from a process that died): counted, so one that keeps dying is finished."""
        self.idle.clear()
        self._queued.setdefault(item.id, self.clock.monotonic())
        if again:
            self._again.add(item.id)
        queue = self._queue_of(item)
        if queue is not self.queue:
            self._small_load += 1
        queue.put_nowait(item)

    def _queue_of(self, item: RunningJob | JobRecord) -> asyncio.Queue[RunningJob | JobRecord]:
        return self.small if _left_to_run(item) <= self.pipeline.batch_size else self.queue

    def has(self, job_id: str) -> bool:
        """Queued or running here."""
        return job_id in self._queued or job_id in self.active

    def backlog(self) -> tuple[int, float]:
        """Jobs waiting for a worker, and how long the oldest of them has waited (s)."""
        oldest = next(iter(self._queued.values()), None)
        return len(self._queued), 0.0 if oldest is None else self.clock.monotonic() - oldest

    def watch(self, job_id: str) -> asyncio.Future[None]:
        """Resolved when the job leaves this runner: ended, or stopped with the process (the
        store says which)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.has(job_id):
            future.set_result(None)
        else:
            self._watchers.setdefault(job_id, []).append(future)
        return future

    def _left(self, job_id: str) -> None:
        if job_id in self._queued:  # running again (after a failure)
            return
        for future in self._watchers.pop(job_id, ()):
            if not future.done():
                future.set_result(None)

    @property
    def load(self) -> int:
        """Jobs running or waiting for a worker."""
        return len(self.active) + self.queue.qsize() + (self.small.qsize() if self.small is not self.queue else 0)

    def room(self) -> int:
        """How many more jobs to take from a shared queue, whose sizes are known only once
        taken: no more than either lane has workers for, and one more waiting."""
        workers, small_workers = self._lanes
        large_free = workers + 1 - (self.load - self._small_load)
        if not small_workers:
            return large_free
        small_free = small_workers + 1 - self._small_load
        if large_free > 0:
            return min(large_free, small_free)
        # Every worker for jobs of many batches busy, one such job waiting: jobs of one
        # batch still come in, one at a time; a large one taken so waits too, and then no
        # more are taken until a worker frees (at most two large jobs wait here).
        return 1 if small_free > 0 and self.queue.qsize() <= 1 else 0

    async def wait_for_change(self, timeout: float = 1.0) -> None:
        """Until a job finishes (or `timeout`)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _work(self, queue: asyncio.Queue[RunningJob | JobRecord]) -> None:
        while True:
            item = await queue.get()
            self._queued.pop(item.id, None)
            self.active[item.id] = item
            held = _left_to_run(item)
            try:
                await self._run(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s failed at recipient %d", item.id, item.cursor)
                await self._after_failure(item)
            finally:
                self.admission.release(held)
                del self.active[item.id]
                self._left(item.id)
                queue.task_done()
                if queue is not self.queue:
                    self._small_load -= 1
                self._changed.set()
                if not self.active and self.queue.empty() and self.small.empty():
                    self.idle.set()

    async def _after_failure(self, item: RunningJob | JobRecord) -> None:
        """Failed at this cursor once: run again now. Twice in a row: give up on the rest
        of the job (each of its remaining recipients gets a decision), never a job that
        fails at every restart."""
        try:
            if await self.pipeline.store.count_retry(item.id, item.cursor) < RETRIES_BEFORE_GIVING_UP:
                log.warning("job %s runs again from recipient %d", item.id, item.cursor)
                self.submit(item)
                return
            running = item if isinstance(item, RunningJob) else await self._load(item)
            await self.pipeline.give_up(running, f"the job failed twice at recipient {item.cursor}")
        except Exception:  # the store too: it stays at its cursor, for the next start
            log.exception("job %s: could not record its failure; it resumes on the next start", item.id)

    async def _load(self, record: JobRecord) -> RunningJob:
        return await load_job(self.pipeline.store, record.id, record.cursor, self.clock.monotonic(), record)

    async def _run(self, item: RunningJob | JobRecord) -> None:
        """Run a job; while the store is unreachable, pause and go on from the last recorded
        batch (a batch sent but not recorded goes again with the same delivery ids)."""
        pause = 0.5
        while True:
            try:
                if isinstance(item, JobRecord):
                    item = await self._load(item)
                    self.active[item.id] = item
                if item.id in self._again:  # its process died here before: how many times?
                    self._again.discard(item.id)
                    if await self.pipeline.store.count_retry(item.id, item.cursor) >= RESUMES_BEFORE_GIVING_UP:
                        await self.pipeline.give_up(
                            item,
                            f"the job stopped its process {RESUMES_BEFORE_GIVING_UP} times at recipient {item.cursor}",
                        )
                        return
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
        for queue in {self.queue, self.small}:
            while not queue.empty():  # not started: they stay in the store as accepted
                job_id = queue.get_nowait().id
                self._queued.pop(job_id, None)
                self._left(job_id)
                queue.task_done()
                if queue is not self.queue:
                    self._small_load -= 1
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


def _left_to_run(item: RunningJob | JobRecord) -> int:
    """Recipients from its cursor on."""
    return (item.recipients if isinstance(item, JobRecord) else len(item.job.recipients)) - item.cursor
