"""The embedded store on a full disk: readiness says so (it checks a write, not a read),
nothing answered is sent again while writes fail, and once there is room the job goes on
by itself (no restart, no remount); the WAL is kept bounded.

A full disk is what SQLite meets when its database may not grow (`max_page_count` at the
current size) and its free pages are used up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.channel import Channel
from gateway.model.delivery import Delivery, Result, Sent
from gateway.store import StoreUnavailable
from gateway.store.sqlite import JOURNAL_SIZE_LIMIT, SQLiteStore
from tests.conftest import make_config
from tests.test_pipeline import Channels, job, recipient
from tests.waiting import until


async def fill(store: SQLiteStore) -> None:
    await store._write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)"))
    await store._write(lambda c: c.execute(f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}"))
    for size in (3000, 300, 30):  # the free room in pages too, not only the free pages
        try:
            while True:
                await store._write(lambda c, n=size: c.execute("INSERT INTO filler VALUES (zeroblob(?))", (n,)))
        except StoreUnavailable:
            pass


async def make_room(store: SQLiteStore) -> None:
    await store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    await store._write(lambda c: c.execute("DROP TABLE filler"))


class Gated(Channel):
    """Sends when the test opens the gate; counts every request."""

    name = "gated"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    gate: asyncio.Event
    requests = 0

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        Gated.requests += len(deliveries)
        await Gated.gate.wait()
        return [Sent() for _ in deliveries]


async def test_a_full_disk_is_not_ready_sends_nothing_twice_and_recovers(start, tmp_path, caplog) -> None:
    Gated.gate, Gated.requests = asyncio.Event(), 0
    running = await start(make_config(tmp_path, pipeline={"batch_size": 10}), extra_plugins=(Channels(Gated),))
    store = running.gateway.store
    assert isinstance(store, SQLiteStore)
    recipients = [recipient(f"u{i}", [f"gated:t{i}"], properties={"order": "1"}) for i in range(30)]
    _, body, _ = await running.post(job(recipients, ["gated"]))
    while Gated.requests < 30:  # every batch is out, waiting for its answers
        await asyncio.sleep(0.005)

    await fill(store)
    async with running.http.get("/readyz") as r:
        assert r.status == 503 and (await r.json())["store"] is False
    Gated.gate.set()  # the answers arrive while no write can be made
    await until(lambda: any("store unavailable" in r.getMessage() for r in caplog.records), what="a failed write")

    await make_room(store)
    done = await running.wait(body["job_id"], timeout=60)
    assert [d["outcome"] for d in done["decisions"]] == ["sent"] * 30
    assert Gated.requests == 30  # nothing answered went again
    async with running.http.get("/readyz") as r:
        assert r.status == 200


async def test_the_wal_is_bounded(tmp_path) -> None:
    store = SQLiteStore(str(tmp_path / "db"))
    await store.open()
    try:
        limit = await store._read(lambda c: c.execute("PRAGMA journal_size_limit").fetchone()[0])
        assert limit == JOURNAL_SIZE_LIMIT
        await store.housekeep()  # a checkpoint that truncates the WAL
        assert (tmp_path / "db-wal").stat().st_size == 0
    finally:
        await store.close()
