"""Decisions in the embedded store: one row per batch and channel, not one per decision.

A row per decision cost the writer thread ~10 us per message on a 2-core host (an INSERT
with a unique index each), more than policy and rendering together; a batch's decisions on
one channel are one msgpack blob. A job's channels are recorded on their own (a channel
whose provider is slow does not hold up the others' decisions), so rows are keyed by the
batch's first recipient *and* the channel; each channel's rows cover disjoint ranges of
recipient indexes (`first`..`last`), in recipient order. A decision recorded again for the
same (recipient, channel), as a released deferred message is, replaces the old one where
it stands. Counts by outcome live in their own table and change in the same transaction.

Reading pages interleaves a range's channel rows: recipient, then the job's channel order.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter

import msgspec

from gateway.model.decision import OUTCOMES, Decision
from gateway.store.base import DecisionCursor, DecisionQuery

SCHEMA = """
CREATE TABLE IF NOT EXISTS decision_rows (
    job_id TEXT NOT NULL,
    first INTEGER NOT NULL,
    channel TEXT NOT NULL,
    rank INTEGER NOT NULL,  -- the channel's place in the job's channel list
    last INTEGER NOT NULL,
    n INTEGER NOT NULL,
    decisions BLOB NOT NULL,
    outcomes INTEGER NOT NULL DEFAULT 63,  -- a bit per outcome present (filters skip the rest)
    PRIMARY KEY (job_id, first, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decision_counts (
    job_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (job_id, outcome)
) WITHOUT ROWID;
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Decision]).decode
_by_recipient = attrgetter("recipient")
BIT = {outcome: 1 << n for n, outcome in enumerate(OUTCOMES)}


def _mask(decisions: Iterable[Decision]) -> int:
    mask = 0
    for d in decisions:
        mask |= BIT[d.outcome]
    return mask


class _Row:
    __slots__ = ("changed", "decisions", "first", "last")

    def __init__(self, first: int, last: int, decisions: list[Decision]):
        self.first, self.last, self.decisions, self.changed = first, last, decisions, False


def put(
    conn: sqlite3.Connection, job_id: str, decisions: Sequence[Decision], now: float, channels: Sequence[str] = ()
) -> None:
    """Insert or replace `decisions` by (recipient, channel). `channels`: the job's channel
    order, which pages follow (default: the order the channels first appear in)."""
    if not decisions:
        return
    counts: Counter[str] = Counter()
    by_channel: dict[str, list[Decision]] = {}
    for d in decisions:
        if not d.at:
            d.at = now
        counts[d.outcome] += 1
        by_channel.setdefault(d.channel, []).append(d)
    order = {name: n for n, name in enumerate(channels)}
    for seen, (channel, group) in enumerate(by_channel.items()):
        _put_channel(conn, job_id, channel, order.get(channel, len(order) + seen), group, counts)
    conn.executemany(
        "INSERT INTO decision_counts VALUES (?, ?, ?) ON CONFLICT (job_id, outcome) DO UPDATE SET n = n + excluded.n",
        [(job_id, outcome, n) for outcome, n in counts.items() if n],
    )


def _put_channel(
    conn: sqlite3.Connection, job_id: str, channel: str, rank: int, decisions: list[Decision], counts: Counter[str]
) -> None:
    recipients = sorted({d.recipient for d in decisions})
    lo, hi = recipients[0], recipients[-1]
    contiguous = len(recipients) == hi - lo + 1 == len(decisions)
    rows = _rows_holding(conn, job_id, channel, recipients, contiguous)
    if not rows and contiguous:  # a new batch: the hot path always goes this way
        _insert(conn, job_id, channel, rank, sorted(decisions, key=_by_recipient))
    else:
        _merge(conn, job_id, channel, rank, rows, decisions, counts)


_DOWN_FROM = (
    "SELECT first, last, decisions FROM decision_rows WHERE job_id = ? AND channel = ? AND first <= ? "
    "ORDER BY first DESC"
)
_BELOW = (
    "SELECT first, last, decisions FROM decision_rows WHERE job_id = ? AND channel = ? AND first <= ? "
    "ORDER BY first DESC LIMIT 1"
)


def _rows_holding(
    conn: sqlite3.Connection, job_id: str, channel: str, recipients: list[int], contiguous: bool
) -> list[_Row]:
    """The channel's stored rows whose ranges hold any of `recipients` (sorted)."""
    found: dict[int, _Row] = {}
    lo, hi = recipients[0], recipients[-1]
    if contiguous:  # one range: the rows starting in it, then the one reaching into it from below
        rows = conn.execute(_DOWN_FROM, (job_id, channel, hi))
        for first, last, blob in rows:  # the channel's ranges are disjoint: past lo, one more at most
            if last < lo:
                break
            found[first] = _Row(first, last, _decode(blob))
            if first < lo:
                break
        rows.close()  # a statement left pending would block some later writes (DROP TABLE)
        return list(found.values())
    covered = -1
    for r in recipients:  # scattered (released messages): the row holding each
        if r <= covered:
            continue
        row = conn.execute(_BELOW, (job_id, channel, r)).fetchone()
        if row is not None and row[1] >= r:
            found[row[0]] = _Row(row[0], row[1], _decode(row[2]))
            covered = row[1]
    return list(found.values())


def _merge(
    conn: sqlite3.Connection,
    job_id: str,
    channel: str,
    rank: int,
    rows: list[_Row],
    decisions: Sequence[Decision],
    counts: Counter[str],
) -> None:
    where: dict[int, tuple[_Row, int]] = {}
    for row in rows:
        for position, old in enumerate(row.decisions):
            where[old.recipient] = (row, position)
    outside: list[Decision] = []
    for d in decisions:
        hit = where.get(d.recipient)
        if hit is not None:
            row, position = hit
            counts[row.decisions[position].outcome] -= 1
            row.decisions[position] = d
            row.changed = True
            continue
        holder = next((row for row in rows if row.first <= d.recipient <= row.last), None)
        if holder is None:
            outside.append(d)
        else:  # a recipient of the range this channel had no decision on yet
            holder.decisions.append(d)
            holder.decisions.sort(key=_by_recipient)
            holder.changed = True
    conn.executemany(
        "UPDATE decision_rows SET n = ?, decisions = ?, outcomes = ? WHERE job_id = ? AND first = ? AND channel = ?",
        [
            (len(row.decisions), _encode(row.decisions), _mask(row.decisions), job_id, row.first, channel)
            for row in rows
            if row.changed
        ],
    )
    for d in sorted(outside, key=_by_recipient):  # in no stored range: one row each keeps them disjoint
        _insert(conn, job_id, channel, rank, [d])


def _insert(conn: sqlite3.Connection, job_id: str, channel: str, rank: int, decisions: list[Decision]) -> None:
    first, last = decisions[0].recipient, decisions[-1].recipient
    conn.execute(
        "INSERT INTO decision_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, first, channel, rank, last, len(decisions), _encode(decisions), _mask(decisions)),
    )


def page(conn: sqlite3.Connection, job_id: str, offset: int, limit: int) -> list[Decision]:
    """Decisions `offset`..`offset + limit` in recipient order, then the job's channel order.

    Rows of different channels may cover different ranges (a channel's release recorded
    alone); rows whose ranges overlap are read together, as one cluster, and sorted."""
    clusters: list[tuple[int, list[tuple[int, str]], int]] = []  # (last, its rows (first, channel), decisions)
    for first, last, channel, n in conn.execute(
        "SELECT first, last, channel, n FROM decision_rows WHERE job_id = ? ORDER BY first", (job_id,)
    ):
        if clusters and first <= clusters[-1][0]:
            reach, rows, total = clusters[-1]
            rows.append((first, channel))
            clusters[-1] = (max(reach, last), rows, total + n)
        else:
            clusters.append((last, [(first, channel)], n))
    end = offset + limit
    out: list[Decision] = []
    start = 0
    for _, rows, n in clusters:
        if start + n > offset:
            merged: list[tuple[int, int, Decision]] = []
            for first, channel in rows:
                blob, rank = conn.execute(
                    "SELECT decisions, rank FROM decision_rows WHERE job_id = ? AND first = ? AND channel = ?",
                    (job_id, first, channel),
                ).fetchone()
                merged += [(d.recipient, rank, d) for d in _decode(blob)]
            merged.sort(key=lambda entry: entry[:2])
            out += [entry[2] for entry in merged[max(0, offset - start) : end - start]]
        start += n
        if start >= end:
            break
    return out


def find(conn: sqlite3.Connection, job_id: str, query: DecisionQuery) -> tuple[list[Decision], DecisionCursor | None]:
    """Decisions matching `query` after its cursor, in recipient then channel order.

    Row headers are read in order and grouped as `page` groups them; a row's blob is read
    and decoded only when its channel, its outcomes (a bit mask per row) and its range of
    recipients can hold a match, so finding one outcome or one user in a job of 10,000
    recipients decodes the rows that hold them, not the job."""
    after = query.after or (-1, -1)
    wanted = set(query.recipients) if query.recipients is not None else None
    bit = BIT.get(query.outcome, 0) if query.outcome is not None else None
    found: list[tuple[int, int, Decision]] = []
    headers = conn.execute(
        "SELECT first, last, channel, rank, outcomes FROM decision_rows WHERE job_id = ? AND last >= ? ORDER BY first",
        (job_id, after[0]),
    ).fetchall()
    for cluster in _clusters(headers):
        lo, hi = cluster[0][0], max(h[1] for h in cluster)
        if wanted is not None and not any(lo <= r <= hi for r in wanted):
            continue
        for first, _, channel, rank, outcomes in cluster:
            if (query.channel is not None and channel != query.channel) or (bit is not None and not outcomes & bit):
                continue
            (blob,) = conn.execute(
                "SELECT decisions FROM decision_rows WHERE job_id = ? AND first = ? AND channel = ?",
                (job_id, first, channel),
            ).fetchone()
            found += [
                (d.recipient, rank, d)
                for d in _decode(blob)
                if (d.recipient, rank) > after
                and (query.outcome is None or d.outcome == query.outcome)
                and (wanted is None or d.recipient in wanted)
            ]
        if len(found) >= query.limit:  # a cluster is sorted whole: the cursor stays exact
            break
    found.sort(key=lambda entry: entry[:2])
    page = found[: query.limit]
    more = len(found) > query.limit
    return [entry[2] for entry in page], (page[-1][0], page[-1][1]) if more or len(page) == query.limit else None


def _clusters(headers: list[tuple[int, int, str, int, int]]) -> list[list[tuple[int, int, str, int, int]]]:
    """Rows whose ranges overlap, together (ordered by `first`)."""
    clusters: list[list[tuple[int, int, str, int, int]]] = []
    reach = -1
    for header in headers:
        if clusters and header[0] <= reach:
            clusters[-1].append(header)
            reach = max(reach, header[1])
        else:
            clusters.append([header])
            reach = header[1]
    return clusters


def counts(conn: sqlite3.Connection, job_id: str) -> dict[str, int]:
    return dict(conn.execute("SELECT outcome, n FROM decision_counts WHERE job_id = ? AND n > 0", (job_id,)))


def migrate(conn: sqlite3.Connection) -> None:
    """Databases of earlier versions: decisions once a row each (`decisions`), then a row
    per batch with every channel in it (`decision_batches`), become rows per batch and
    channel."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "decision_batches" in tables:
        rows = conn.execute("SELECT job_id, decisions FROM decision_batches ORDER BY job_id, first").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM decision_counts WHERE job_id IN (SELECT DISTINCT job_id FROM decision_batches)")
        for job_id, blob in rows:
            put(conn, job_id, _decode(blob), 0.0)
        conn.execute("DROP TABLE decision_batches")
        conn.execute("COMMIT")


def migrate_row_per_decision(conn: sqlite3.Connection, rows: Iterable[tuple[str, Decision]]) -> None:
    """Databases written before batch rows: `rows` are (job id, decision) in job,
    recipient, then stored order."""
    jobs: dict[str, list[Decision]] = {}
    for job_id, decision in rows:
        jobs.setdefault(job_id, []).append(decision)
    for job_id, decisions in jobs.items():
        put(conn, job_id, decisions, 0.0)
