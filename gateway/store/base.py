"""The store interface: what the gateway keeps, whichever backend keeps it.

The embedded SQLite backend is the default; a Redis backend implements the same methods
for several processes. Writes are per job or per batch, never per message.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import msgspec

from gateway.model.caps import CapOutcome, CapRequest
from gateway.model.decision import Decision, Earlier
from gateway.model.delivery import Result

JobState = str  # "accepted" | "running" | "waiting" (deferred messages left) | "completed" | "cancelled"
ENDED = ("completed", "cancelled")


class JobRecord(msgspec.Struct, kw_only=True):
    id: str
    campaign: str
    state: JobState
    recipients: int
    cursor: int  # recipients [0, cursor) have all their decisions stored
    warnings: list[str]
    created_at: float
    finished_at: float | None = None
    tenant: str = "default"
    cancelled_at: float | None = None  # cancel asked for: it ends `cancelled`


JobCursor = tuple[float, str]  # (created_at, id) of the last job of a page


class JobQuery(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs`: None is any."""

    tenant: str | None = None
    campaign: str | None = None
    state: str | None = None
    created_after: float | None = None
    limit: int = 50
    before: JobCursor | None = None

    def matches(self, record: JobRecord) -> bool:
        return (
            (self.tenant is None or record.tenant == self.tenant)
            and (self.campaign is None or record.campaign == self.campaign)
            and (self.state is None or record.state == self.state)
            and (self.created_after is None or record.created_at > self.created_after)
        )


DecisionCursor = tuple[int, int]  # (recipient, the channel's place in the job) of the last shown


class DecisionQuery(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs/{id}/decisions`: None is any."""

    outcome: str | None = None
    channel: str | None = None
    recipients: list[int] | None = None  # a user's places in the job (`user_id=`)
    limit: int = 100
    after: DecisionCursor | None = None


class OptOut(msgspec.Struct, kw_only=True):
    address: str  # as opt-outs are compared (`opt_out_key`), without the tenant
    campaign: str | None
    at: float


class InvalidTokenEntry(msgspec.Struct, kw_only=True):
    channel: str
    token: str
    user_id: str
    job_id: str
    at: float


FeedCursor = tuple[float, str]  # opt-outs: (at, address) of the last shown


class OutboxEvent(msgspec.Struct, kw_only=True):
    """A status callback waiting to go to its tenant's endpoint: its id is fixed when it is
    written, so a redelivery carries the same one."""

    id: str
    type: str  # decisions, job.completed, job.cancelled, token.invalidated, opt_out.recorded
    data: bytes  # the event's `data`, JSON
    at: float
    job_id: str = ""
    seq: str = ""  # its place in the tenant's outbox (set by the store)


class Outbox(msgspec.Struct, kw_only=True):
    """What a write adds to its tenant's outbox, in the same commit."""

    tenant: str
    events: list[OutboxEvent] = []
    # Added only when this write ends the job, its type set to `job.completed` or
    # `job.cancelled` by how it ended.
    on_end: OutboxEvent | None = None


class IdempotencyRecord(msgspec.Struct, kw_only=True):
    key: str  # scoped: "<api key id>:<Idempotency-Key header>"
    body_hash: str
    status: int
    response: bytes
    expires_at: float


class DeferredItem(msgspec.Struct, frozen=True):
    """A message held back (quiet hours, local-time delivery, a cap, a provider being
    retried or unavailable), due at `due`. A retried one carries its retry state, so the
    count and the first attempt's time go on from where they were."""

    job_id: str
    recipient: int
    channel: str
    due: float
    reason: str
    attempts: int = 0
    first_attempt: float | None = None
    last_error: str | None = None
    # Devices still to send to (indexes into the recipient's destinations; None: all), and
    # the answers the others already gave (their index -> Result), for the final decision.
    devices: list[int] | None = None
    answers: dict[int, Result] | None = None
    # The deferred decision, for the history of the one its release makes.
    detail: str | None = None
    deferred_at: float | None = None
    history: list[Earlier] | None = None

    def as_earlier(self) -> list[Earlier]:
        """The decision's history once released: what it had, then this deferral."""
        entry = Earlier(outcome="deferred", reason=self.reason or None, detail=self.detail, until=self.due)
        if self.deferred_at is not None:
            entry.at = self.deferred_at
        return [*(self.history or ()), entry]


class DeferredState(msgspec.Struct, array_like=True):
    """A deferred item's retry state and its decision's past, as the stores keep it beside
    the item (fields are only ever added at the end: stored states stay readable)."""

    attempts: int
    first_attempt: float | None
    last_error: str | None
    devices: list[int] | None
    answers: dict[int, Result] | None
    detail: str | None = None
    deferred_at: float | None = None
    history: list[Earlier] | None = None


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(DeferredState).decode


def pack_state(item: DeferredItem) -> bytes:
    return _pack(
        DeferredState(
            item.attempts,
            item.first_attempt,
            item.last_error,
            item.devices,
            item.answers,
            item.detail,
            item.deferred_at,
            item.history,
        )
    )


def with_state(item: DeferredItem, blob: bytes | None) -> DeferredItem:
    """The item with the state the store kept beside it (none: as it is)."""
    if not blob:
        return item
    s = _unpack(blob)
    return msgspec.structs.replace(with_retry(item, s), detail=s.detail, deferred_at=s.deferred_at, history=s.history)


def with_retry(item: DeferredItem, s: DeferredState) -> DeferredItem:
    """The item going on from this retry state (its count, first attempt, devices left)."""
    return msgspec.structs.replace(
        item,
        attempts=s.attempts,
        first_attempt=s.first_attempt,
        last_error=s.last_error,
        devices=s.devices,
        answers=s.answers,
    )


class StoreUnavailable(Exception):
    """The backend cannot be reached; intake answers 503 rather than accept blindly."""


class StoreBusy(Exception):
    """A shared queue is past a bound (recipients or jobs not taken yet, or the age of the
    oldest): intake answers 429 with the message."""


class Store(abc.ABC):
    # True: accepted jobs wait in the store and any process takes them (`take_jobs`); the
    # embedded store's jobs are run by the process that accepted them.
    shared_queue = False
    # Shared queue: recipients accepted and not yet taken by any process; past this,
    # `accept_job` raises StoreBusy. 0: no bound.
    queue_limit = 0

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Can the store take writes now (not only answer reads)?"""

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
    async def record_batch(
        self,
        job_id: str,
        cursor: int,
        decisions: Sequence[Decision],
        now: float,
        deferred: Sequence[DeferredItem] = (),
        channels: Sequence[str] = (),
        finish: bool = False,
        outbox: Outbox | None = None,
    ) -> None:
        """Store decisions and deferred messages of a job's recipients and, unless `cursor`
        is -1, advance its cursor, atomically. Acknowledgements of recipients before the
        cursor are forgotten in the same commit: their decisions hold what they said.
        `channels`: the job's channel order, which `decisions` pages follow (default: the
        order channels first appear in). `finish`: this is the job's last record, and
        `finish_job` is done with it (in the same commit where the store can). `outbox`:
        status callbacks, written in the same commit."""

    @abc.abstractmethod
    async def record_acks(self, job_id: str, acks: Sequence[tuple[int, str, Result]]) -> None:
        """Providers' final answers as they arrive, (recipient, delivery id, result): after
        a crash, a takeover or a failed write, only deliveries without one go again."""

    @abc.abstractmethod
    async def acks(self, job_id: str) -> dict[int, dict[str, Result]]:
        """The job's acknowledgements not yet covered by the cursor, by recipient, then
        delivery id."""

    @abc.abstractmethod
    async def count_retry(self, job_id: str, cursor: int) -> int:
        """Once more, the job is being run again from `cursor` (its worker failed there, or
        its process died there): how many times in a row at that cursor, this one included.
        A job that keeps failing at one place is finished rather than retried forever."""

    @abc.abstractmethod
    async def finish_job(self, job_id: str, now: float, outbox: Outbox | None = None) -> None:
        """Every recipient has been through the pipeline: `completed`, or `waiting` while
        deferred messages remain."""

    # -- frequency caps --------------------------------------------------------------
    @abc.abstractmethod
    async def reserve_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        """Check and take cap slots for a batch of messages, each all-or-nothing, durably
        and atomically with respect to every other reservation."""

    @abc.abstractmethod
    async def check_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        """What `reserve_caps` would answer for these requests, in order (a grant counting
        against the requests after it), taking nothing: preview's read-only check."""

    @abc.abstractmethod
    async def refund_caps(self, reservations: Sequence[str]) -> None:
        """Give back slots of messages that were not delivered."""

    @abc.abstractmethod
    async def prune_caps(self, before: float) -> None:
        """Forget cap history older than any window reaches."""

    # -- email opt-outs (RFC 8058 one-click unsubscribe) -------------------------------
    @abc.abstractmethod
    async def record_opt_out(self, address: str, campaign: str, now: float) -> None: ...

    @abc.abstractmethod
    async def clear_opt_out(self, address: str) -> bool:
        """Upstream has a new subscription state for this address; True if one existed."""

    @abc.abstractmethod
    async def opt_outs(self) -> set[str]:
        """Every opted-out address (lower case), loaded at start-up."""

    @abc.abstractmethod
    async def opt_out_feed(
        self, tenant: str, after: FeedCursor | None, limit: int
    ) -> tuple[list[OptOut], FeedCursor | None]:
        """The tenant's current opt-outs, oldest first, a page after `after`."""

    @abc.abstractmethod
    async def invalid_token_feed(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[InvalidTokenEntry], str | None]:
        """Dead tokens and subscriptions the tenant's jobs met (recorded with their
        decisions), oldest first, a page after `after`."""

    # -- deferred messages -----------------------------------------------------------
    @abc.abstractmethod
    async def claim_due(self, now: float, limit: int, lease: float) -> list[DeferredItem]:
        """Due deferred messages, claimed until `now + lease` so no one else takes them;
        a claim not settled by then returns (a crashed worker's work is not lost)."""

    @abc.abstractmethod
    async def settle_deferred(
        self,
        job_id: str,
        decisions: Sequence[Decision],
        deferred: Sequence[DeferredItem],
        now: float,
        channels: Sequence[str] = (),
        outbox: Outbox | None = None,
    ) -> None:
        """Record released messages' decisions; those deferred again get their new due
        time, the rest leave the schedule; the job completes when nothing is left."""

    # -- status callbacks (the outbox) --------------------------------------------------
    @abc.abstractmethod
    async def append_outbox(self, outbox: Outbox) -> None:
        """Events that come with no other write (an opt-out recorded)."""

    @abc.abstractmethod
    async def outbox(self, tenant: str, limit: int) -> list[OutboxEvent]:
        """The tenant's oldest undelivered events, in the order they were written."""

    @abc.abstractmethod
    async def outbox_done(self, tenant: str, seq: str) -> None:
        """Events up to and including `seq` were delivered (or given up): forget them."""

    async def outbox_lease(self, tenant: str, owner: str, ttl: float) -> bool:
        """May `owner` deliver the tenant's events for `ttl` seconds (one process at a
        time, so they go in order)? A store one process uses: always."""
        return True

    @abc.abstractmethod
    async def cancel_job(self, job_id: str, now: float) -> JobRecord | None:
        """Mark a job cancelled (the first time: `cancelled_at` stays), unless it has
        completed; its record as it is now (None: no such job). Whoever runs it stops at
        its next batch; the job ends `cancelled` once every message has its decision."""

    @abc.abstractmethod
    async def delete_job(self, job_id: str) -> None:
        """Forget an ended job: its record, body and decisions (retention)."""

    @abc.abstractmethod
    async def replace_job_body(self, job_id: str, body: bytes) -> None:
        """A job's stored body rewritten (a user's profile data erased from it)."""

    @abc.abstractmethod
    async def deferred_of(self, job_id: str) -> list[DeferredItem]:
        """The job's messages still waiting in the schedule."""

    @abc.abstractmethod
    async def deferred_counts(self) -> dict[str, int]:
        """Messages waiting in the schedule, by reason (the deferred backlog's gauge)."""

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> tuple[list[JobRecord], JobCursor | None]:
        """Jobs matching `query`, newest first, at most `query.limit`; and the cursor to
        pass as `query.before` for the next page (None: there is none)."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def outcome_counts(self, job_id: str) -> dict[str, int]: ...

    @abc.abstractmethod
    async def decisions(self, job_id: str, offset: int, limit: int) -> list[Decision]:
        """Decisions ordered by recipient, then by the job's channel order."""

    @abc.abstractmethod
    async def find_decisions(self, job_id: str, query: DecisionQuery) -> tuple[list[Decision], DecisionCursor | None]:
        """Decisions matching `query` after its cursor, in the same order, at most
        `query.limit`, without reading the job's others (an index, not a scan); and the
        cursor for the next page (None: there is none)."""

    # -- several processes (backends shared between processes override these) ------------
    async def take_jobs(self, count: int, wait: float) -> list[JobRecord]:
        """Shared queue: up to `count` accepted jobs no process has taken, now this
        process's; waits up to `wait` seconds for one."""
        return []

    async def heartbeat(self, ttl: float) -> None:
        """Renew this process's hold on the jobs it has taken for `ttl` seconds more."""
        return None

    async def claim_orphaned_jobs(self) -> list[JobRecord]:
        """Unfinished jobs taken by a process whose hold lapsed (it stopped heartbeating),
        now this process's. A store only one process uses has none."""
        return []

    @abc.abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Drop expired idempotency keys; return how many."""

    async def housekeep(self) -> None:
        """Periodic upkeep of the backend itself (the embedded store's WAL)."""
        return None
