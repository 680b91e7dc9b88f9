"""The store interface: what the gateway keeps, whichever backend keeps it.

The embedded SQLite backend is the default; a Redis backend implements the same methods
for several processes. Writes are per job or per batch, never per message.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

from gateway.decision import Decision

JobState = str  # "accepted" | "running" | "completed"


class JobRecord(msgspec.Struct, kw_only=True):
    id: str
    campaign: str
    state: JobState
    recipients: int
    cursor: int  # recipients [0, cursor) have all their decisions stored
    warnings: list[str]
    created_at: float
    finished_at: float | None = None


class IdempotencyRecord(msgspec.Struct, kw_only=True):
    key: str  # scoped: "<api key id>:<Idempotency-Key header>"
    body_hash: str
    status: int
    response: bytes
    expires_at: float


class StoreUnavailable(Exception):
    """The backend cannot be reached; intake answers 503 rather than accept blindly."""


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def accept_job(
        self, job: JobRecord, body: bytes, idempotency: IdempotencyRecord | None, now: float
    ) -> IdempotencyRecord | None:
        """Store a new job durably, with its idempotency record, in one commit.

        When an unexpired record already holds the same key, store nothing and return
        that record (the caller compares bodies); otherwise return None once durable.
        """

    @abc.abstractmethod
    async def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    async def resumable_jobs(self) -> list[JobRecord]:
        """Jobs accepted but not completed, oldest first: resumed at start-up."""

    @abc.abstractmethod
    async def job_body(self, job_id: str) -> bytes: ...

    @abc.abstractmethod
    async def record_batch(self, job_id: str, cursor: int, decisions: Sequence[Decision], now: float) -> None:
        """Store one batch's decisions and advance the job's cursor, atomically."""

    @abc.abstractmethod
    async def finish_job(self, job_id: str, now: float) -> None: ...

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def outcome_counts(self, job_id: str) -> dict[str, int]: ...

    @abc.abstractmethod
    async def decisions(self, job_id: str, offset: int, limit: int) -> list[Decision]:
        """Decisions ordered by recipient, then by the job's channel order."""

    @abc.abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Drop expired idempotency keys; return how many."""
