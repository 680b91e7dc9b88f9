"""Providers' answers, written to the store as they arrive (an append-only log per job).

Each final answer goes in the job's in-memory map at once (so a batch run again after a
failed store write does not send it again) and into a buffer the store takes at the end
of the event loop's turn after next, the answers of those turns in one write (the embedded
store appends them to a file at once, `store/ackfile.py`; Redis adds them to a sorted set).
After a crash or a takeover only deliveries without a recorded answer go again:
duplicates are bounded by the requests in flight, plus the answers of the last three turns.

A batch whose decisions are recorded meanwhile (a job of one batch, the last batch of a
job) drops its buffered answers instead of writing them: its task resumes the turn after its
last answer, or the turn after that when its send shared an attempt with other jobs'
(`dispatch/dispatcher.py`: the attempt's first sender hands the others their answers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gateway.model.delivery import Delivery, Result
from gateway.store import Store, StoreUnavailable

log = logging.getLogger(__name__)


class AckLog:
    def __init__(self, store: Store):
        self.store = store
        self._pending: dict[str, dict[str, tuple[int, Result]]] = {}  # job -> delivery id -> answer
        self._timer: asyncio.Handle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def add(self, job_id: str, delivery: Delivery, result: Result) -> None:
        self._pending.setdefault(job_id, {})[delivery.id] = (delivery.recipient, result)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_soon(self._wait, 2)

    def _wait(self, turns: int) -> None:
        # An answer is the last thing a batch waits for: its task resumes a turn or two after
        # the answer arrived and, when that records its decisions, drops the answer before
        # this flush runs; one write instead of two.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_soon(self._wait, turns - 1) if turns > 1 else loop.call_soon(self.flush)

    def drop(self, job_id: str, delivery_ids: Iterable[str]) -> None:
        """Their decisions are being recorded: no need to write their answers too."""
        pending = self._pending.get(job_id)
        if pending:
            for delivery_id in delivery_ids:
                pending.pop(delivery_id, None)

    def forget(self, job_id: str) -> None:
        """The job is finished: its buffered answers are of no use."""
        self._pending.pop(job_id, None)

    def flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        for job_id, answers in pending.items():
            if answers:
                entries = [(recipient, delivery_id, result) for delivery_id, (recipient, result) in answers.items()]
                task = asyncio.ensure_future(self._write(job_id, entries))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def _write(self, job_id: str, entries: list[tuple[int, str, Result]]) -> None:
        try:
            await self.store.record_acks(job_id, entries)
        except StoreUnavailable as exc:  # they stay in the job's memory; its decisions will hold them
            log.warning("job %s: %d answers not recorded yet: %s", job_id, len(entries), exc)

    async def drain(self) -> None:
        """Write what is buffered now (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
