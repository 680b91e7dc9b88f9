from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model.decision import OUTCOMES, Decision
from gateway.store.base import IdempotencyRecord, JobRecord
from gateway.store.sqlite import SQLiteStore, _Gathering
from tests.waiting import until


def record(job_id: str, n: int = 3) -> JobRecord:
    return JobRecord(id=job_id, campaign="c", state="accepted", recipients=n, cursor=0, warnings=["w"], created_at=1.0)


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SQLiteStore(str(tmp_path / "db.sqlite"), "full")
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path):
    """The same contract, on both backends."""
    if request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "db.sqlite"), "full")
    else:
        import uuid

        from gateway.store.redis import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex[:8]}:")
    await s.open()
    yield s
    await s.close()


async def test_concurrent_writes_share_commits(sqlite_store) -> None:
    store = sqlite_store
    await asyncio.gather(*(store.accept_job(record(f"j{i}"), b"{}", None, 1.0) for i in range(200)))
    assert len(await store.resumable_jobs()) == 200
    assert store.commits < 200  # fsyncs were shared


def test_gathering_waits_only_after_a_commit_that_others_wrote_during() -> None:
    now = [100.0]
    gathering = _Gathering(0.002, clock=lambda: now[0])
    assert not gathering.worth_waiting(1)  # a lone caller: no wait
    gathering.committed(1, arrived_meanwhile=False)
    assert not gathering.worth_waiting(1)
    gathering.committed(1, arrived_meanwhile=True)  # writes from several callers at once
    assert gathering.worth_waiting(1) and gathering.worth_waiting(_Gathering.SMALL - 1)
    assert not gathering.worth_waiting(_Gathering.SMALL)  # enough to share a commit already
    now[0] += _Gathering.MEMORY + 0.001  # and it wears off when they stop
    assert not gathering.worth_waiting(1)
    gathering.committed(2, arrived_meanwhile=False)  # two callers' writes in one group
    assert gathering.worth_waiting(1)
    assert not _Gathering(0.0, clock=lambda: now[0]).worth_waiting(1)  # "0ms": never


async def test_a_steady_stream_of_writes_shares_commits(tmp_path) -> None:
    """Writes from many callers, one every millisecond or so (a stream of one-message
    jobs): with a wait they share commits; a commit's cost is then shared too."""
    store = SQLiteStore(str(tmp_path / "db.sqlite"), "full", group_commit_wait=0.05)
    await store.open()
    try:
        writes = []
        for i in range(0, 200, 2):  # two callers at a time
            writes.append(asyncio.ensure_future(store.accept_job(record(f"j{i}"), b"{}", None, 1.0)))
            writes.append(asyncio.ensure_future(store.accept_job(record(f"j{i + 1}"), b"{}", None, 1.0)))
            await asyncio.sleep(0.001)  # the pace of the callers (not a wait for a result)
        await asyncio.gather(*writes)
        assert len(await store.resumable_jobs()) == 200
        assert store.commits < 200 / 3
    finally:
        await store.close()


async def test_a_lone_caller_does_not_wait_for_company(tmp_path) -> None:
    """Each write awaited before the next: nothing arrives during a commit, so no group
    waits (with a wait of 0.5 s each, 30 writes would take 15 s)."""
    store = SQLiteStore(str(tmp_path / "db.sqlite"), "full", group_commit_wait=0.5)
    await store.open()
    try:
        started = time.monotonic()
        for i in range(30):
            await store.accept_job(record(f"j{i}"), b"{}", None, 1.0)
        assert time.monotonic() - started < 5
        assert store.commits >= 30
    finally:
        await store.close()


async def test_a_failing_write_does_not_undo_its_neighbours(sqlite_store) -> None:
    store = sqlite_store
    await store.accept_job(record("dup"), b"{}", None, 1.0)
    results = await asyncio.gather(
        store.accept_job(record("a"), b"{}", None, 1.0),
        store.accept_job(record("dup"), b"{}", None, 1.0),  # primary key violation
        store.accept_job(record("b"), b"{}", None, 1.0),
        return_exceptions=True,
    )
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert {j.id for j in await store.resumable_jobs()} == {"dup", "a", "b"}


async def test_batches_advance_the_cursor_and_keep_channel_order(store) -> None:
    await store.accept_job(record("j", 2), b'{"x":1}', None, 1.0)
    batch = [Decision(recipient=0, user_id="u0", channel=c, outcome="sent") for c in ("zeta", "alpha")]
    await store.record_batch("j", 1, batch, 2.0)
    job = await store.get_job("j")
    assert job is not None and (job.state, job.cursor) == ("running", 1)
    assert [d.channel for d in await store.decisions("j", 0, 10)] == ["zeta", "alpha"]
    await store.record_batch(
        "j",
        2,
        [Decision(recipient=1, user_id="u1", channel="zeta", outcome="failed", reason="x", invalid_tokens=["t"])],
        3.0,
    )
    await store.finish_job("j", 4.0)
    assert await store.resumable_jobs() == []
    assert await store.outcome_counts("j") == {"sent": 2, "failed": 1}
    last = (await store.decisions("j", 2, 10))[0]
    assert (last.reason, last.invalid_tokens, last.at) == ("x", ["t"], 3.0)
    assert await store.job_body("j") == b'{"x":1}'


async def test_idempotency_first_writer_wins(store) -> None:
    idem = IdempotencyRecord(key="k", body_hash="h1", status=202, response=b"first", expires_at=100.0)
    assert await store.accept_job(record("a"), b"{}", idem, 1.0) is None
    other = IdempotencyRecord(key="k", body_hash="h2", status=202, response=b"second", expires_at=100.0)
    existing = await store.accept_job(record("b"), b"{}", other, 2.0)
    assert existing is not None and existing.response == b"first"
    assert await store.get_job("b") is None  # nothing stored for the loser
    assert await store.get_idempotency("k", 100.0) is None  # expired at its TTL


async def test_caps_reserve_and_refund(store) -> None:
    from gateway.model.caps import CapRequest, Check, Denied, Granted

    def req(user: str, now: float) -> CapRequest:
        return CapRequest(
            user,
            [Check("daily", now - 86400, 2, 86400, None, "defer"), Check("week", 0.0, 5, None, 7 * 86400.0, "drop")],
        )

    first = await store.reserve_caps([req("ana", 100.0), req("ana", 100.0), req("ben", 100.0)], 100.0)
    assert [type(o) for o in first] == [Granted, Granted, Granted]
    (third,) = await store.reserve_caps([req("ana", 200.0)], 200.0)
    assert third == Denied("daily", "defer", 86500.0)  # the first send leaves the window
    await store.refund_caps([first[0].reservation])  # type: ignore[union-attr]
    (again,) = await store.reserve_caps([req("ana", 300.0)], 300.0)
    assert isinstance(again, Granted)
    (empty,) = await store.reserve_caps([CapRequest("eve", [])], 300.0)
    assert empty == Granted(None)


async def test_deferred_claim_lease_and_settle(store) -> None:
    from gateway.store import DeferredItem

    await store.accept_job(record("j", 2), b"{}", None, 1.0)
    deferred = [DeferredItem("j", 0, "apns", 50.0, "quiet_hours"), DeferredItem("j", 1, "apns", 500.0, "quiet_hours")]
    decisions = [
        Decision(recipient=i, user_id=f"u{i}", channel="apns", outcome="deferred", until=d.due)
        for i, d in enumerate(deferred)
    ]
    await store.record_batch("j", 2, decisions, 2.0, deferred)
    await store.finish_job("j", 3.0)
    assert (await store.get_job("j")).state == "waiting"  # type: ignore[union-attr]
    assert await store.claim_due(10.0, 10, 60.0) == []
    (claimed,) = await store.claim_due(100.0, 10, 60.0)
    assert (claimed.recipient, claimed.reason) == (0, "quiet_hours")
    assert await store.claim_due(120.0, 10, 60.0) == []  # leased
    assert len(await store.claim_due(170.0, 10, 60.0)) == 1  # the lease ran out: back again
    sent = Decision(recipient=0, user_id="u0", channel="apns", outcome="sent")
    await store.settle_deferred("j", [sent], [], 171.0)
    assert await store.outcome_counts("j") == {"sent": 1, "deferred": 1}
    assert (await store.get_job("j")).state == "waiting"  # type: ignore[union-attr]
    (last,) = await store.claim_due(600.0, 10, 60.0)
    await store.settle_deferred(
        "j", [Decision(recipient=1, user_id="u1", channel="apns", outcome="capped", reason="daily")], [], 601.0
    )
    assert (await store.get_job("j")).state == "completed"  # type: ignore[union-attr]
    assert [d.outcome for d in await store.decisions("j", 0, 10)] == ["sent", "capped"]
    del last


async def test_retries_are_counted_per_cursor(store) -> None:
    await store.accept_job(record("j"), b"{}", None, 1.0)
    assert [await store.count_retry("j", 0) for _ in range(3)] == [1, 2, 3]
    assert await store.count_retry("j", 5) == 1  # it moved on: the count starts again
    assert await store.count_retry("missing", 0) == 0


async def test_opt_outs(store) -> None:
    await store.record_opt_out("Ana@Example.com", "spring", 1.0)
    assert await store.opt_outs() == {"ana@example.com"}
    assert await store.clear_opt_out("ana@example.com") is True
    assert await store.clear_opt_out("ana@example.com") is False


async def test_data_survives_reopen(tmp_path) -> None:
    path = str(tmp_path / "db.sqlite")
    first = SQLiteStore(path)
    await first.open()
    await first.accept_job(record("j"), b"{}", None, 1.0)
    await first.close()
    second = SQLiteStore(path)
    await second.open()
    assert [j.id for j in await second.resumable_jobs()] == ["j"]
    assert await second.ping()
    await second.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8))
def test_cursor_only_moves_forward(batches: list[int]) -> None:
    """Batches recorded in any order never move a job's cursor back."""
    import tempfile

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            s = SQLiteStore(f"{tmp}/db")
            await s.open()
            await s.accept_job(record("j", sum(batches)), b"{}", None, 1.0)
            cursors = []
            total = 0
            for size in batches:
                total += size
                cursors.append(total)
            for cursor in reversed(cursors):
                await s.record_batch("j", cursor, [], 1.0)
            job = await s.get_job("j")
            assert job is not None and job.cursor == max(cursors)
            await s.close()

    asyncio.run(scenario())


_recording = st.tuples(
    st.booleans(),  # a contiguous batch (as record_batch gets) or scattered (released messages)
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=8, unique=True),
    st.lists(st.sampled_from(["apns", "email", "speaker"]), min_size=1, max_size=3, unique=True),
    st.sampled_from(OUTCOMES),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(_recording, min_size=1, max_size=10), st.integers(0, 60), st.integers(1, 25))
def test_decisions_read_back_in_order_last_write_wins(recordings, offset: int, limit: int) -> None:
    """However batches and releases overlap, reads give one decision per (recipient,
    channel), the last recorded, in recipient then the job's channel order, and the counts
    agree."""
    import tempfile

    model: dict[int, dict[str, str]] = {}
    batches: list[list[Decision]] = []
    for contiguous, recipients, channels, outcome in recordings:
        if contiguous:
            recipients = list(range(min(recipients), min(recipients) + len(recipients)))
        batch = [
            Decision(recipient=r, user_id=f"u{r}", channel=c, outcome=outcome) for r in recipients for c in channels
        ]
        for d in batch:
            model.setdefault(d.recipient, {})[d.channel] = d.outcome
        batches.append(batch)
    order = ["speaker", "apns", "email"]  # the job's channels
    expected = [(r, c, model[r][c]) for r in sorted(model) for c in order if c in model[r]]

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            s = SQLiteStore(f"{tmp}/db")
            await s.open()
            await s.accept_job(record("j", 31), b"{}", None, 1.0)
            for batch in batches:
                await s.settle_deferred("j", batch, [], 2.0, channels=order)
            page = await s.decisions("j", offset, limit)
            assert [(d.recipient, d.channel, d.outcome) for d in page] == expected[offset : offset + limit]
            assert await s.outcome_counts("j") == dict(Counter(o for _, _, o in expected))
            await s.close()

    asyncio.run(scenario())


async def test_a_database_with_a_row_per_decision_is_migrated(tmp_path) -> None:
    path = str(tmp_path / "db.sqlite")
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE decisions (job_id TEXT NOT NULL, recipient INTEGER NOT NULL, channel TEXT NOT NULL,
            user_id TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT, detail TEXT, variant TEXT, until REAL,
            at REAL NOT NULL, invalid_tokens TEXT, flags TEXT, UNIQUE (job_id, recipient, channel));
        INSERT INTO decisions VALUES ('j', 1, 'email', 'u1', 'sent', NULL, NULL, 'default', NULL, 5.0, NULL, NULL);
        INSERT INTO decisions VALUES ('j', 0, 'apns', 'u0', 'invalid_token', 'Unregistered', NULL, NULL, NULL, 4.0,
                                      '["tok"]', '["timezone_fallback"]');
        INSERT INTO decisions VALUES ('k', 0, 'apns', 'u0', 'sent', NULL, NULL, NULL, NULL, 4.0, NULL, NULL);
    """)
    old.close()
    store = SQLiteStore(path)
    await store.open()
    first, second = await store.decisions("j", 0, 10)
    assert (first.recipient, first.outcome, first.reason, first.invalid_tokens, first.flags, first.at) == (
        0,
        "invalid_token",
        "Unregistered",
        ["tok"],
        ["timezone_fallback"],
        4.0,
    )
    assert (second.recipient, second.channel, second.variant) == (1, "email", "default")
    assert await store.outcome_counts("j") == {"sent": 1, "invalid_token": 1}
    assert await store.outcome_counts("k") == {"sent": 1}
    await store.close()


async def test_redis_queue_take_hold_claim_and_bound(redis_url) -> None:
    """The intake stream: each job is taken by one process; a process resumes only what it
    took; entries whose hold lapsed go to another process; finishing acknowledges."""
    import uuid

    from gateway.store.base import StoreBusy
    from gateway.store.redis import GROUP, RedisStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = RedisStore(redis_url, prefix, instance="gw-a")
    b = RedisStore(redis_url, prefix, instance="gw-b", queue_limit=6)
    await a.open()
    await b.open()
    try:
        await a.accept_job(record("j1"), b"{}", None, 1.0)
        await b.accept_job(record("j2"), b"{}", None, 2.0)
        assert [j.id for j in await a.take_jobs(1, wait=0)] == ["j1"]
        assert [j.id for j in await b.take_jobs(5, wait=0)] == ["j2"]
        assert await a.take_jobs(5, wait=0) == []
        assert [j.id for j in await a.resumable_jobs()] == ["j1"]
        assert [j.id for j in await b.resumable_jobs()] == ["j2"]
        assert (await b.get_job("j1")) is not None  # every process reads every job

        # A waiting take returns as soon as a job is accepted.
        waiting = asyncio.create_task(a.take_jobs(1, wait=5))

        async def blocked_in_xread() -> bool:
            return any(c.get("cmd") == "xread" for c in await b.redis.client_list())

        await until(blocked_in_xread, what="the take waits in XREAD")
        await b.accept_job(record("j3"), b"{}", None, 3.0)
        assert [j.id for j in await asyncio.wait_for(waiting, 2)] == ["j3"]

        # a stops renewing; b renews its own and claims a's once their idle time passes the lease.
        await b.heartbeat(0.3)
        assert await b.claim_orphaned_jobs() == []
        claimed: list[str] = []

        async def all_claimed() -> bool:  # each entry once its idle time passes the lease
            await b.heartbeat(0.3)
            claimed.extend(j.id for j in await b.claim_orphaned_jobs())
            return sorted(claimed) == ["j1", "j3"]

        await until(all_claimed, what="a's entries claimed by b")
        assert await a.resumable_jobs() == []
        assert sorted(j.id for j in await b.resumable_jobs()) == ["j1", "j2", "j3"]

        for job_id in ("j1", "j2", "j3"):
            await b.finish_job(job_id, 4.0)
        assert (await b.redis.xpending(b.stream, GROUP))["pending"] == 0
        assert await b.redis.xlen(b.stream) == 0

        # The bound counts recipients accepted and not yet taken; one job always fits.
        await b.accept_job(record("big", n=8), b"{}", None, 5.0)
        with pytest.raises(StoreBusy):
            await b.accept_job(record("more", n=1), b"{}", None, 5.0)
        assert [j.id for j in await a.take_jobs(1, wait=0)] == ["big"]
        await b.accept_job(record("more", n=1), b"{}", None, 5.0)
    finally:
        await a.close()
        await b.close()


async def test_redis_queue_bounds_jobs_and_the_age_of_the_oldest(redis_url) -> None:
    """Jobs accepted and not yet taken by any process, and how long the oldest has
    waited (the stream entry's own time, on Redis's clock), bound intake."""
    import uuid

    from gateway.store.base import StoreBusy
    from gateway.store.redis import RedisStore

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    store = RedisStore(redis_url, prefix, instance="gw-a", queue_jobs=2, queue_age=0.2)
    await store.open()
    try:
        await store.accept_job(record("j1"), b"{}", None, 1.0)
        await store.accept_job(record("j2"), b"{}", None, 1.0)
        with pytest.raises(StoreBusy, match=r"^2 jobs are queued and not yet taken \(limit 2\)$"):
            await store.accept_job(record("j3"), b"{}", None, 1.0)
        assert [j.id for j in await store.take_jobs(1, wait=0)] == ["j1"]
        await store.accept_job(record("j3"), b"{}", None, 1.0)  # one was taken: room again

        assert [j.id for j in await store.take_jobs(1, wait=0)] == ["j2"]

        async def j3_is_old() -> bool:  # on Redis's clock, which stamped its entry
            seconds, micros = await store.redis.time()
            entry = (await store.redis.xrevrange(store.stream, count=1))[0][0]
            return seconds * 1000 + micros // 1000 - int(entry.split(b"-")[0]) > 250

        await until(j3_is_old, what="j3 waits past the age bound")
        with pytest.raises(StoreBusy, match=r"^the oldest queued job has waited [0-9.]+s \(limit 0.2s\)$"):
            await store.accept_job(record("j4"), b"{}", None, 1.0)
        assert [j.id for j in await store.take_jobs(10, wait=0)]  # the queue empties ...
        await store.accept_job(record("fresh"), b"{}", None, 1.0)  # ... and a job fits again
    finally:
        await store.close()


async def test_small_and_large_bodies_come_back_whole(store) -> None:
    """A small body stays in its job's row (the embedded store), a large one apart: both
    come back byte for byte, through any cursor move."""
    small, large = b'{"campaign": "c"}', b'{"x": "' + b"y" * 10_000 + b'"}'
    await store.accept_job(record("small"), small, None, 1.0)
    await store.accept_job(record("large"), large, None, 1.0)
    await store.record_batch("small", 1, [], 2.0)
    assert await store.job_body("small") == small
    assert await store.job_body("large") == large
