"""The embedded store: SQLite in WAL mode, written by one thread with group commits.

Every write is a small function queued to the writer thread. The thread takes whatever
has queued up (up to `group_commit_max`), runs it in one transaction, with a savepoint per
write so one failing write does not undo the others, commits once (one fsync), and only
then resolves the callers' futures. So a `202` waits for durability, but a burst of
accepted jobs and recorded batches shares fsyncs instead of paying one each. While writes
come from many callers at once, a group also waits up to `group_commit_wait` for more
(`_Gathering`): a steady stream of small jobs otherwise commits each write alone.
Reads go through a second connection on its own thread: WAL lets them run beside writes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from gateway.model.caps import CapOutcome, CapRequest
from gateway.model.decision import Decision
from gateway.model.delivery import Result
from gateway.store import sqlite_decisions as decision_rows
from gateway.store.ackfile import AckFile
from gateway.store.base import (
    ENDED,
    DecisionCursor,
    DecisionQuery,
    DeferredItem,
    FeedCursor,
    IdempotencyRecord,
    InvalidTokenEntry,
    JobCursor,
    JobQuery,
    JobRecord,
    OptOut,
    Outbox,
    OutboxEvent,
    Store,
    StoreUnavailable,
    pack_state,
    with_state,
)
from gateway.store.caps import CapLedger

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    state TEXT NOT NULL,
    recipients INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    body BLOB NOT NULL,  -- bodies up to INLINE_BODY_BYTES; larger ones in job_bodies
    retry_cursor INTEGER NOT NULL DEFAULT -1,
    retries INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT 'default',
    cancelled_at REAL
);
-- A job's body apart from its row: the row changes with every recorded batch, and SQLite
-- rewrites a whole row to change one column (a 10 MB body per cursor move).
CREATE TABLE IF NOT EXISTS job_bodies (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(state, created_at) WHERE state != 'completed';
CREATE TABLE IF NOT EXISTS deferred (
    job_id TEXT NOT NULL,
    recipient INTEGER NOT NULL,
    channel TEXT NOT NULL,
    due REAL NOT NULL,
    reason TEXT NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    state BLOB,
    PRIMARY KEY (job_id, recipient, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deferred_due ON deferred(due);
-- Frequency-cap history: one row per reservation batch (msgpack of (id, rule, user, at)
-- entries), and refunds as tombstones; the ledger itself lives in memory.
CREATE TABLE IF NOT EXISTS cap_batches (at REAL NOT NULL, entries BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS cap_batches_at ON cap_batches(at);
CREATE TABLE IF NOT EXISTS cap_refunds (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opt_outs (address TEXT PRIMARY KEY, campaign TEXT, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS opt_outs_at ON opt_outs(at, address);
-- Dead tokens and subscriptions, for the tenant's feed (written with their decisions).
CREATE TABLE IF NOT EXISTS invalid_tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    token TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS invalid_tokens_by_tenant ON invalid_tokens(tenant, seq);
-- Status callbacks waiting to be delivered, in order per tenant (written with the decisions).
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    job_id TEXT NOT NULL,
    data BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_tenant ON outbox(tenant, seq);
CREATE TABLE IF NOT EXISTS health (probe TEXT PRIMARY KEY, at REAL NOT NULL, room BLOB);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    expires_at REAL NOT NULL
);
"""
    + decision_rows.SCHEMA
)

_JOB_COLUMNS = "id, campaign, state, recipients, cursor, warnings, created_at, finished_at, tenant, cancelled_at"
log = logging.getLogger(__name__)
_STOP = object()
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack
_strings = msgspec.json.Decoder(list[str])
# The WAL is truncated to this after each checkpoint: a burst cannot leave it huge, and a
# disk near full gets its space back (`housekeep` also checkpoints with TRUNCATE).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# A body this small stays in its job's row (one INSERT, not two): rewriting it with the
# row at each cursor move costs less than the second statement. Larger ones go in
# job_bodies (`job_body` reads either).
INLINE_BODY_BYTES = 4096


class _Gathering:
    """Whether a small group should wait for more writes before it commits. A commit costs
    about the same for one write as for several (bare SQLite, one-recipient jobs,
    synchronous=full: 250 us of CPU a job committed alone, 94 with four a commit), but
    waiting only pays while other callers are writing: a caller that awaits each write
    before the next would wait for nothing. So a group of fewer than `SMALL` writes waits
    only within `MEMORY` seconds of a sign of several callers: a group of more than one
    write, or a write arriving while a commit ran. A lone caller gives neither."""

    MEMORY = 0.1
    SMALL = 8

    def __init__(self, wait: float, clock: Callable[[], float] = time.monotonic):
        self.wait, self.clock = wait, clock
        self._until = -1.0  # gather while the clock is before this

    def worth_waiting(self, group_size: int) -> bool:
        return self.wait > 0 and group_size < self.SMALL and self.clock() < self._until

    def committed(self, group_size: int, arrived_meanwhile: bool) -> None:
        if group_size > 1 or arrived_meanwhile:
            self._until = self.clock() + self.MEMORY


class SQLiteStore(Store):
    def __init__(
        self, path: str, synchronous: str = "full", group_commit_max: int = 512, group_commit_wait: float = 0.002
    ):
        self.path = path
        self.synchronous = synchronous.upper()
        self.group_commit_max = group_commit_max
        self.gathering = _Gathering(group_commit_wait)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._read_conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0  # for tests and metrics: how many group commits ran
        self.caps = CapLedger()
        self.ackfile = AckFile(None if path == ":memory:" else f"{path}.acks")

    # -- lifecycle -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        return conn

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        try:
            write_conn = self._connect()
            write_conn.executescript(SCHEMA)
            _migrate(write_conn)
            self._read_conn = self._connect()
            self.caps.load(_cap_history(write_conn))
            self.ackfile.open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._writer = threading.Thread(target=self._write_loop, args=(write_conn,), name="store-write", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read_conn is not None:
            self._reader.submit(self._read_conn.close).result()
            self._read_conn = None
        self._reader.shutdown(wait=True)
        self.ackfile.close()

    async def ping(self) -> bool:
        """A write that needs room, not a read: with the disk full, reads still answer
        while every write fails, and readiness must say so. A new row of a few pages each
        time (the last one's pages are freed after), so it fails as soon as nothing can
        grow."""
        probe = f"ping-{time.monotonic_ns()}"

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO health VALUES (?, ?, zeroblob(16384))", (probe, time.time()))
            conn.execute("DELETE FROM health WHERE probe != ?", (probe,))

        try:
            await self._write(write)
        except (StoreUnavailable, sqlite3.Error):
            return False
        return True

    async def housekeep(self) -> None:
        """Checkpoint the WAL and truncate it (it would otherwise keep its largest size).
        On the reading connection: a checkpoint cannot run inside the writer's transaction."""
        try:
            await self._read(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        except sqlite3.Error as exc:  # busy, or the disk: the next one will do
            log.warning("WAL checkpoint: %s", exc)

    # -- plumbing --------------------------------------------------------------------
    def _write(self, fn: Callable[[sqlite3.Connection], Any], fsync: bool = True) -> asyncio.Future[Any]:
        """`fsync=False`: the write must survive the process dying (it reaches the WAL before
        the future resolves) but not a power cut; a group of only such writes commits
        without an fsync."""
        if self._writer is None or self._loop is None:
            raise StoreUnavailable("store is not open")
        future = self._loop.create_future()
        self._queue.put((fn, future, fsync))
        return future

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        current = self.synchronous
        while True:
            item = self._queue.get()
            if item is _STOP:
                conn.close()
                return
            group = [item]
            if not self._take(group) and self.gathering.worth_waiting(len(group)):
                time.sleep(self.gathering.wait)  # one wake-up, not one per write arriving meanwhile
                self._take(group)
            synchronous = self.synchronous if any(fsync for _, _, fsync in group) else "NORMAL"
            if synchronous != current:
                conn.execute(f"PRAGMA synchronous={synchronous}")
                current = synchronous
            outcomes: Outcomes = []  # the last group's results (cursors) freed before this one runs
            try:
                outcomes = _run_group(conn, group)
                conn.execute("COMMIT")
                self.commits += 1
            except (sqlite3.Error, _Aborted) as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                cause = exc.__cause__ if isinstance(exc, _Aborted) else exc
                error = StoreUnavailable(f"commit failed: {cause}")
                outcomes = [(future, None, error) for _, future, _ in group]
            self.gathering.committed(len(group), not self._queue.empty())
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, outcomes)

    def _take(self, group: list[Any]) -> bool:
        """Add what has queued up to the group (up to `group_commit_max`); True at a stop
        (left in the queue for the loop)."""
        while len(group) < self.group_commit_max:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is _STOP:
                self._queue.put(_STOP)
                return True
            group.append(nxt)
        return False

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        assert self._loop is not None and self._read_conn is not None
        conn = self._read_conn
        return await self._loop.run_in_executor(self._reader, fn, conn)

    # -- jobs ------------------------------------------------------------------------
    async def accept_job(
        self, job: JobRecord, body: bytes, idempotency: IdempotencyRecord | None, now: float
    ) -> IdempotencyRecord | None:
        def write(conn: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None:
                existing = _idempotency(conn, idempotency.key, now)
                if existing is not None:
                    return existing
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?)",
                    (
                        idempotency.key,
                        idempotency.body_hash,
                        idempotency.status,
                        idempotency.response,
                        idempotency.expires_at,
                    ),
                )
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.campaign,
                    job.state,
                    job.recipients,
                    job.cursor,
                    _json.encode(job.warnings).decode(),
                    job.created_at,
                    job.finished_at,
                    job.tenant,
                    job.cancelled_at,
                    body if len(body) <= INLINE_BODY_BYTES else b"",
                ),
            )
            if len(body) > INLINE_BODY_BYTES:
                conn.execute("INSERT INTO job_bodies VALUES (?, ?)", (job.id, body))
            return None

        return await self._write(write)

    async def get_idempotency(self, key: str, now: float) -> IdempotencyRecord | None:
        return await self._read(lambda c: _idempotency(c, key, now))

    async def resumable_jobs(self) -> list[JobRecord]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ('accepted', 'running') ORDER BY created_at"
            ).fetchall()
        )
        return [_job(row) for row in rows]

    async def job_body(self, job_id: str) -> bytes:
        row = await self._read(
            lambda c: c.execute(
                "SELECT coalesce((SELECT body FROM job_bodies WHERE id = ?1), body) FROM jobs WHERE id = ?1", (job_id,)
            ).fetchone()
        )
        if row is None:
            raise KeyError(job_id)
        return bytes(row[0])

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
        dead = _dead_tokens(job_id, decisions, now)

        def write(conn: sqlite3.Connection) -> str | None:
            decision_rows.put(conn, job_id, decisions, now, channels)
            _write_deferred(conn, deferred)
            if dead:
                conn.executemany(
                    "INSERT INTO invalid_tokens (tenant, job_id, user_id, channel, token, at) "
                    "SELECT tenant, ?, ?, ?, ?, ? FROM jobs WHERE id = ?",
                    dead,
                )
            if finish:
                state = _close_job(conn, job_id, now)
                _write_outbox(conn, outbox, state)
                return state
            _write_outbox(conn, outbox, None)
            if cursor >= 0:
                conn.execute(
                    "UPDATE jobs SET cursor = MAX(cursor, ?), state = 'running' WHERE id = ? "
                    "AND state NOT IN ('completed', 'cancelled')",
                    (cursor, job_id),
                )
            return None

        state = await self._write(write)
        if cursor >= 0:
            self.ackfile.passed(job_id, cursor)
        if finish:
            self._closed(job_id, state)

    async def count_retry(self, job_id: str, cursor: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE jobs SET retries = CASE WHEN retry_cursor = ? THEN retries + 1 ELSE 1 END, retry_cursor = ? "
                "WHERE id = ?",
                (cursor, cursor, job_id),
            )
            row = conn.execute("SELECT retries FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return int(row[0]) if row else 0

        return int(await self._write(write))

    async def record_acks(self, job_id: str, acks: Sequence[tuple[int, str, Result]]) -> None:
        """Appended to the answers file beside the database (`ackfile.py`): on disk for a
        process crash at once, without waiting for the group commit's fsync."""
        if acks:
            try:
                self.ackfile.append(job_id, acks)
            except OSError as exc:
                raise StoreUnavailable(f"answers log: {exc}") from exc

    async def acks(self, job_id: str) -> dict[int, dict[str, Result]]:
        return self.ackfile.answers(job_id)

    async def finish_job(self, job_id: str, now: float, outbox: Outbox | None = None) -> None:
        def write(conn: sqlite3.Connection) -> str:
            state = _close_job(conn, job_id, now)
            _write_outbox(conn, outbox, state)
            return state

        self._closed(job_id, await self._write(write))

    async def append_outbox(self, outbox: Outbox) -> None:
        await self._write(lambda c: _write_outbox(c, outbox, None))

    async def outbox(self, tenant: str, limit: int) -> list[OutboxEvent]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, id, type, job_id, data, at FROM outbox WHERE tenant = ? ORDER BY seq LIMIT ?",
                (tenant, limit),
            ).fetchall()
        )
        return [OutboxEvent(seq=str(s), id=i, type=t, job_id=j, data=d, at=a) for s, i, t, j, d, a in rows]

    async def outbox_done(self, tenant: str, seq: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM outbox WHERE tenant = ? AND seq <= ?", (tenant, int(seq))))

    def _closed(self, job_id: str, state: str | None) -> None:
        if state in ENDED:
            self.ackfile.finished(job_id)

    # -- frequency caps ----------------------------------------------------------------
    async def reserve_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        # Checked and taken in memory with no await in between (exact within this
        # process, which is the embedded store's scope), then made durable before the
        # caller sends anything, so a restart does not forget what was counted.
        outcomes, added = self.caps.reserve(requests, now)
        if added:
            blob = _msgpack.encode(added)
            await self._write(lambda c: c.execute("INSERT INTO cap_batches VALUES (?, ?)", (now, blob)))
        return outcomes

    async def check_caps(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        return self.caps.simulate(requests, now)

    async def refund_caps(self, reservations: Sequence[str]) -> None:
        self.caps.refund(reservations)
        rows = [(r, time.time()) for r in reservations]
        await self._write(lambda c: c.executemany("INSERT OR IGNORE INTO cap_refunds VALUES (?, ?)", rows))

    async def prune_caps(self, before: float) -> None:
        self.caps.prune(before)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM cap_batches WHERE at < ?", (before,))
            conn.execute("DELETE FROM cap_refunds WHERE at < ?", (before,))

        await self._write(write)

    # -- email opt-outs ---------------------------------------------------------------
    async def record_opt_out(self, address: str, campaign: str, now: float) -> None:
        await self._write(
            lambda c: c.execute("INSERT OR REPLACE INTO opt_outs VALUES (?, ?, ?)", (address.lower(), campaign, now))
        )

    async def opt_out_feed(
        self, tenant: str, after: FeedCursor | None, limit: int
    ) -> tuple[list[OptOut], FeedCursor | None]:
        at, address = after if after is not None else (-1.0, "")
        if tenant == "default":  # keys without a tenant's prefix
            scope, args = "instr(address, char(31)) = 0", []
        else:
            scope, args = "address >= ? AND address < ?", [f"{tenant}\x1f", f"{tenant}\x20"]
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT address, campaign, at FROM opt_outs WHERE {scope} AND (at > ? OR (at = ? AND address > ?)) "
                "ORDER BY at, address LIMIT ?",
                (*args, at, at, address, limit),
            ).fetchall()
        )
        found = [OptOut(address=a.rpartition("\x1f")[2], campaign=c, at=t) for a, c, t in rows]
        return found, (rows[-1][2], rows[-1][0]) if len(rows) == limit else None

    async def invalid_token_feed(
        self, tenant: str, after: str | None, limit: int
    ) -> tuple[list[InvalidTokenEntry], str | None]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, channel, token, user_id, job_id, at FROM invalid_tokens WHERE tenant = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (tenant, int(after) if after is not None and after.isdigit() else 0, limit),
            ).fetchall()
        )
        found = [InvalidTokenEntry(channel=ch, token=t, user_id=u, job_id=j, at=a) for _, ch, t, u, j, a in rows]
        return found, str(rows[-1][0]) if len(rows) == limit else None

    async def clear_opt_out(self, address: str) -> bool:
        return bool(
            await self._write(
                lambda c: c.execute("DELETE FROM opt_outs WHERE address = ?", (address.lower(),)).rowcount
            )
        )

    async def opt_outs(self) -> set[str]:
        return {r[0] for r in await self._read(lambda c: c.execute("SELECT address FROM opt_outs").fetchall())}

    # -- deferred messages -------------------------------------------------------------
    async def claim_due(self, now: float, limit: int, lease: float) -> list[DeferredItem]:
        def write(conn: sqlite3.Connection) -> list[DeferredItem]:
            rows = conn.execute(
                "SELECT job_id, recipient, channel, due, reason, state FROM deferred "
                "WHERE due <= ? AND claimed_until <= ? ORDER BY due LIMIT ?",
                (now, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deferred SET claimed_until = ? WHERE job_id = ? AND recipient = ? AND channel = ?",
                [(now + lease, r[0], r[1], r[2]) for r in rows],
            )
            return [_deferred_item(r) for r in rows]

        return await self._write(write)

    async def settle_deferred(
        self,
        job_id: str,
        decisions: Sequence[Decision],
        deferred: Sequence[DeferredItem],
        now: float,
        channels: Sequence[str] = (),
        outbox: Outbox | None = None,
    ) -> None:
        again = {(item.recipient, item.channel) for item in deferred}
        done = [(job_id, d.recipient, d.channel) for d in decisions if (d.recipient, d.channel) not in again]

        def write(conn: sqlite3.Connection) -> str | None:
            decision_rows.put(conn, job_id, decisions, now, channels)
            conn.executemany("DELETE FROM deferred WHERE job_id = ? AND recipient = ? AND channel = ?", done)
            _write_deferred(conn, deferred)
            state = conn.execute("SELECT state, cursor, recipients FROM jobs WHERE id = ?", (job_id,)).fetchone()
            ended = _close_job(conn, job_id, now) if state is not None and state[0] == "waiting" else None
            _write_outbox(conn, outbox, ended)
            return ended

        self._closed(job_id, await self._write(write))

    async def cancel_job(self, job_id: str, now: float) -> JobRecord | None:
        def write(conn: sqlite3.Connection) -> JobRecord | None:
            conn.execute(
                "UPDATE jobs SET cancelled_at = COALESCE(cancelled_at, ?) WHERE id = ? AND state != 'completed'",
                (now, job_id),
            )
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return _job(row) if row else None

        return await self._write(write)

    async def delete_job(self, job_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for table, column in (
                ("decision_rows", "job_id"),
                ("decision_counts", "job_id"),
                ("deferred", "job_id"),
                ("job_bodies", "id"),
                ("jobs", "id"),
            ):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

        await self._write(write)

    async def replace_job_body(self, job_id: str, body: bytes) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM job_bodies WHERE id = ?", (job_id,))
            inline = body if len(body) <= INLINE_BODY_BYTES else b""
            conn.execute("UPDATE jobs SET body = ? WHERE id = ?", (inline, job_id))
            if not inline:
                conn.execute("INSERT INTO job_bodies VALUES (?, ?)", (job_id, body))

        await self._write(write)

    async def deferred_of(self, job_id: str) -> list[DeferredItem]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT job_id, recipient, channel, due, reason, state FROM deferred WHERE job_id = ?", (job_id,)
            ).fetchall()
        )
        return [_deferred_item(row) for row in rows]

    async def deferred_counts(self) -> dict[str, int]:
        rows = await self._read(lambda c: c.execute("SELECT reason, count(*) FROM deferred GROUP BY reason").fetchall())
        return dict(rows)

    async def list_jobs(self, query: JobQuery) -> tuple[list[JobRecord], JobCursor | None]:
        where: list[str] = []
        args: list[object] = []
        for column, value in (("tenant", query.tenant), ("campaign", query.campaign), ("state", query.state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.created_after is not None:
            where.append("created_at > ?")
            args.append(query.created_after)
        if query.before is not None:  # the cursor: older than the last job shown, ties by id
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [query.before[0], query.before[0], query.before[1]]
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} "
        sql += "ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (*args, query.limit)).fetchall())
        records = [_job(row) for row in rows]
        more = len(records) == query.limit
        return records, (records[-1].created_at, records[-1].id) if more else None

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = await self._read(
            lambda c: c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return _job(row) if row else None

    async def outcome_counts(self, job_id: str) -> dict[str, int]:
        return await self._read(lambda c: decision_rows.counts(c, job_id))

    async def decisions(self, job_id: str, offset: int, limit: int) -> list[Decision]:
        return await self._read(lambda c: decision_rows.page(c, job_id, offset, limit))

    async def find_decisions(self, job_id: str, query: DecisionQuery) -> tuple[list[Decision], DecisionCursor | None]:
        return await self._read(lambda c: decision_rows.find(c, job_id, query))

    async def purge_expired(self, now: float) -> int:
        return await self._write(lambda c: c.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,)).rowcount)


def _cap_history(conn: sqlite3.Connection) -> list[tuple[str, str, str, float]]:
    refunded = {row[0] for row in conn.execute("SELECT id FROM cap_refunds")}
    entries: list[tuple[str, str, str, float]] = []
    for (blob,) in conn.execute("SELECT entries FROM cap_batches ORDER BY at"):
        entries += [(e[0], e[1], e[2], e[3]) for e in _msgpack.decode(blob) if e[0] not in refunded]
    return entries


def _migrate(conn: sqlite3.Connection) -> None:
    """Databases of earlier versions: columns added since, and decisions once stored a row
    each moved to rows per batch."""
    for table, name, ddl in (
        ("jobs", "retry_cursor", "INTEGER NOT NULL DEFAULT -1"),
        ("jobs", "retries", "INTEGER NOT NULL DEFAULT 0"),
        ("deferred", "state", "BLOB"),
        ("jobs", "tenant", "TEXT NOT NULL DEFAULT 'default'"),
        ("jobs", "cancelled_at", "REAL"),
        ("decision_rows", "outcomes", "INTEGER NOT NULL DEFAULT 63"),  # every bit: read when filtering
    ):
        if name not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
    # A tenant's jobs, newest first (the list endpoint): after the column exists.
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs(tenant, created_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(created_at)")
    _migrate_decision_rows(conn)
    decision_rows.migrate(conn)


def _migrate_decision_rows(conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'").fetchone() is None:
        return
    columns = "job_id, recipient, user_id, channel, outcome, reason, detail, variant, until, at, invalid_tokens, flags"
    rows = conn.execute(f"SELECT {columns} FROM decisions ORDER BY job_id, recipient, rowid")
    conn.execute("BEGIN IMMEDIATE")
    decision_rows.migrate_row_per_decision(
        conn,
        (
            (
                r[0],
                Decision(
                    recipient=r[1],
                    user_id=r[2],
                    channel=r[3],
                    outcome=r[4],
                    reason=r[5],
                    detail=r[6],
                    variant=r[7],
                    until=r[8],
                    at=r[9],
                    invalid_tokens=_strings.decode(r[10]) if r[10] else None,
                    flags=_strings.decode(r[11]) if r[11] else None,
                ),
            )
            for r in rows.fetchall()
        ),
    )
    conn.execute("DROP TABLE decisions")
    conn.execute("COMMIT")


def _write_outbox(conn: sqlite3.Connection, outbox: Outbox | None, state: str | None) -> None:
    """The write's events, and its end event when `state` says the job ended."""
    if outbox is None:
        return
    events = list(outbox.events)
    if state in ENDED and outbox.on_end is not None:
        events.append(msgspec.structs.replace(outbox.on_end, type=f"job.{state}"))
    conn.executemany(
        "INSERT INTO outbox (tenant, id, type, job_id, data, at) VALUES (?, ?, ?, ?, ?, ?)",
        [(outbox.tenant, e.id, e.type, e.job_id, e.data, e.at) for e in events],
    )


def _dead_tokens(job_id: str, decisions: Sequence[Decision], now: float) -> list[tuple[Any, ...]]:
    return [
        (job_id, d.user_id, d.channel, token, d.at or now, job_id)
        for d in decisions
        if d.invalid_tokens
        for token in d.invalid_tokens
    ]


def _write_deferred(conn: sqlite3.Connection, items: Sequence[DeferredItem]) -> None:
    if not items:  # the usual case: not even a statement to prepare
        return
    conn.executemany(
        "INSERT OR REPLACE INTO deferred (job_id, recipient, channel, due, reason, claimed_until, state) "
        "VALUES (?, ?, ?, ?, ?, 0, ?)",
        [(i.job_id, i.recipient, i.channel, i.due, i.reason, pack_state(i)) for i in items],
    )


def _deferred_item(row: tuple[Any, ...]) -> DeferredItem:
    job_id, recipient, channel, due, reason, state = row
    return with_state(DeferredItem(job_id, recipient, channel, due, reason), state)


class _Aborted(Exception):
    """The transaction was rolled back under a write (by SQLite, not by us)."""


def _close_job(conn: sqlite3.Connection, job_id: str, now: float) -> str:
    """`waiting` while deferred messages remain, else `completed` (`cancelled` when a
    cancel was asked for)."""
    row = conn.execute(_CLOSE_JOB, (job_id, now)).fetchone()
    return row[0] if row is not None else "completed"


# One statement (a third of a one-recipient job's record was closing it in three).
_CLOSE_JOB = """
UPDATE jobs SET
    state = CASE WHEN EXISTS (SELECT 1 FROM deferred WHERE job_id = ?1) THEN 'waiting'
                 WHEN cancelled_at IS NOT NULL THEN 'cancelled' ELSE 'completed' END,
    finished_at = CASE WHEN EXISTS (SELECT 1 FROM deferred WHERE job_id = ?1) THEN NULL ELSE ?2 END,
    cursor = recipients
WHERE id = ?1
RETURNING state
"""


Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def _run_group(conn: sqlite3.Connection, group: list[tuple[Any, asyncio.Future[Any], bool]]) -> Outcomes:
    """The group's writes in one transaction, left open for the commit. Straight through
    first; when one fails, the transaction is rolled back and run again with a savepoint
    per write, so one bad write does not undo its neighbours (savepoints cost two
    statements a write, a third of a one-recipient job's statements)."""
    conn.execute("BEGIN IMMEDIATE")
    done: Outcomes = []
    try:
        for fn, future, _ in group:
            done.append((future, fn(conn), None))
        return done
    except Exception as exc:
        if not conn.in_transaction:  # SQLite rolled back itself (a full disk, an I/O error)
            raise _Aborted(exc) from exc
        # Free the statements this pass left open (results, the failing write's frame): a
        # pending statement makes SQLite refuse some writes (DROP TABLE) in the next pass.
        done.clear()
        exc.__traceback__ = None
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    outcomes: Outcomes = []
    for fn, future, _ in group:
        conn.execute("SAVEPOINT w")
        try:
            outcomes.append((future, fn(conn), None))
            conn.execute("RELEASE w")
        except Exception as exc:
            if not conn.in_transaction:  # every write of the group failed with this one
                raise _Aborted(exc) from exc
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
            outcomes.append((future, None, exc))
    return outcomes


def _settle(outcomes: Outcomes) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _idempotency(conn: sqlite3.Connection, key: str, now: float) -> IdempotencyRecord | None:
    row = conn.execute(
        "SELECT key, body_hash, status, response, expires_at FROM idempotency WHERE key = ? AND expires_at > ?",
        (key, now),
    ).fetchone()
    if row is None:
        return None
    return IdempotencyRecord(key=row[0], body_hash=row[1], status=row[2], response=bytes(row[3]), expires_at=row[4])


def _job(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        campaign=row[1],
        state=row[2],
        recipients=row[3],
        cursor=row[4],
        warnings=_strings.decode(row[5]),
        created_at=row[6],
        finished_at=row[7],
        tenant=row[8],
        cancelled_at=row[9],
    )
