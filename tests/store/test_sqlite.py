from __future__ import annotations

import asyncio
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decision import Decision
from gateway.store.base import IdempotencyRecord, JobRecord
from gateway.store.sqlite import SQLiteStore


def record(job_id: str, n: int = 3) -> JobRecord:
    return JobRecord(id=job_id, campaign="c", state="accepted", recipients=n, cursor=0, warnings=["w"],
                     created_at=1.0)


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "db.sqlite"), "full")
    await s.open()
    yield s
    await s.close()


async def test_concurrent_writes_share_commits(store) -> None:
    await asyncio.gather(*(store.accept_job(record(f"j{i}"), b"{}", None, 1.0) for i in range(200)))
    assert len(await store.resumable_jobs()) == 200
    assert store.commits < 200  # fsyncs were shared


async def test_a_failing_write_does_not_undo_its_neighbours(store) -> None:
    await store.accept_job(record("dup"), b"{}", None, 1.0)
    results = await asyncio.gather(
        store.accept_job(record("a"), b"{}", None, 1.0),
        store.accept_job(record("dup"), b"{}", None, 1.0),  # primary key violation
        store.accept_job(record("b"), b"{}", None, 1.0),
        return_exceptions=True)
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert {j.id for j in await store.resumable_jobs()} == {"dup", "a", "b"}


async def test_batches_advance_the_cursor_and_keep_channel_order(store) -> None:
    await store.accept_job(record("j", 2), b'{"x":1}', None, 1.0)
    batch = [Decision(recipient=0, user_id="u0", channel=c, outcome="sent") for c in ("zeta", "alpha")]
    await store.record_batch("j", 1, batch, 2.0)
    job = await store.get_job("j")
    assert job is not None and (job.state, job.cursor) == ("running", 1)
    assert [d.channel for d in await store.decisions("j", 0, 10)] == ["zeta", "alpha"]
    await store.record_batch("j", 2, [Decision(recipient=1, user_id="u1", channel="zeta", outcome="failed",
                                               reason="x", invalid_tokens=["t"])], 3.0)
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
