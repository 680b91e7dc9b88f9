"""Decisions in the embedded store: one row per recorded batch, not one per decision.

A row per decision cost the writer thread ~10 us per message on a 2-core host (an
INSERT with a unique index each), more than policy and rendering together; a batch of
500 recipients is now one msgpack blob. Rows cover disjoint ranges of recipient indexes
(`first`..`last`) and hold their decisions in recipient, then channel, order. A decision
recorded again for the same (recipient, channel), as a released deferred message is,
replaces the old one where it stands. Counts by outcome live in their own table and
change in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import attrgetter

import msgspec

from gateway.model.decision import Decision

SCHEMA = """
CREATE TABLE IF NOT EXISTS decision_batches (
    job_id TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    n INTEGER NOT NULL,
    decisions BLOB NOT NULL,
    PRIMARY KEY (job_id, first)
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


class _Row:
    __slots__ = ("changed", "decisions", "first", "last")

    def __init__(self, first: int, last: int, decisions: list[Decision]):
        self.first, self.last, self.decisions, self.changed = first, last, decisions, False


def put(conn: sqlite3.Connection, job_id: str, decisions: Sequence[Decision], now: float) -> None:
    """Insert or replace `decisions` by (recipient, channel)."""
    if not decisions:
        return
    for d in decisions:
        if not d.at:
            d.at = now
    counts: Counter[str] = Counter(d.outcome for d in decisions)
    recipients = sorted({d.recipient for d in decisions})
    lo, hi = recipients[0], recipients[-1]
    contiguous = len(recipients) == hi - lo + 1
    rows = _rows_holding(conn, job_id, recipients, contiguous)
    if not rows and contiguous:  # a new batch: the hot path always goes this way
        _insert(conn, job_id, sorted(decisions, key=_by_recipient))
    else:
        _merge(conn, job_id, rows, decisions, counts)
    conn.executemany(
        "INSERT INTO decision_counts VALUES (?, ?, ?) ON CONFLICT (job_id, outcome) DO UPDATE SET n = n + excluded.n",
        [(job_id, outcome, n) for outcome, n in counts.items() if n],
    )


def _rows_holding(conn: sqlite3.Connection, job_id: str, recipients: list[int], contiguous: bool) -> list[_Row]:
    """The stored rows whose ranges hold any of `recipients` (sorted)."""
    found: dict[int, _Row] = {}
    lo, hi = recipients[0], recipients[-1]
    below = (
        "SELECT first, last, decisions FROM decision_batches WHERE job_id = ? AND first <= ? "
        "ORDER BY first DESC LIMIT 1"
    )
    if contiguous:  # one range: the row reaching into it from below, and those starting in it
        candidates = (
            conn.execute(below, (job_id, lo)).fetchall()
            + conn.execute(
                "SELECT first, last, decisions FROM decision_batches WHERE job_id = ? AND first > ? AND first <= ?",
                (job_id, lo, hi),
            ).fetchall()
        )
        for first, last, blob in candidates:
            if last >= lo:
                found[first] = _Row(first, last, _decode(blob))
        return list(found.values())
    covered = -1
    for r in recipients:  # scattered (released messages): the row holding each
        if r <= covered:
            continue
        row = conn.execute(below, (job_id, r)).fetchone()
        if row is not None and row[1] >= r:
            found[row[0]] = _Row(row[0], row[1], _decode(row[2]))
            covered = row[1]
    return list(found.values())


def _merge(
    conn: sqlite3.Connection, job_id: str, rows: list[_Row], decisions: Sequence[Decision], counts: Counter[str]
) -> None:
    where: dict[tuple[int, str], tuple[_Row, int]] = {}
    for row in rows:
        for position, old in enumerate(row.decisions):
            where[(old.recipient, old.channel)] = (row, position)
    outside: list[Decision] = []
    for d in decisions:
        hit = where.get((d.recipient, d.channel))
        if hit is not None:
            row, position = hit
            counts[row.decisions[position].outcome] -= 1
            row.decisions[position] = d
            row.changed = True
            continue
        holder = next((row for row in rows if row.first <= d.recipient <= row.last), None)
        if holder is None:
            outside.append(d)
        else:  # a channel this recipient had no decision on yet: after its others (sorted below)
            holder.decisions.append(d)
            holder.changed = True
    for row in rows:
        if row.changed:  # stable: each recipient's decisions keep their order
            row.decisions.sort(key=_by_recipient)
    conn.executemany(
        "UPDATE decision_batches SET n = ?, decisions = ? WHERE job_id = ? AND first = ?",
        [(len(row.decisions), _encode(row.decisions), job_id, row.first) for row in rows if row.changed],
    )
    by_recipient: dict[int, list[Decision]] = {}
    for d in outside:  # in no stored range: one row each keeps the ranges disjoint
        by_recipient.setdefault(d.recipient, []).append(d)
    for group in by_recipient.values():
        _insert(conn, job_id, group)


def _insert(conn: sqlite3.Connection, job_id: str, decisions: list[Decision]) -> None:
    conn.execute(
        "INSERT INTO decision_batches VALUES (?, ?, ?, ?, ?)",
        (job_id, decisions[0].recipient, decisions[-1].recipient, len(decisions), _encode(decisions)),
    )


def page(conn: sqlite3.Connection, job_id: str, offset: int, limit: int) -> list[Decision]:
    """Decisions `offset`..`offset + limit` in recipient, then channel, order."""
    end = offset + limit
    wanted: list[tuple[int, int]] = []  # (first, index of the row's first decision)
    start = 0
    for first, n in conn.execute("SELECT first, n FROM decision_batches WHERE job_id = ? ORDER BY first", (job_id,)):
        if start + n > offset:
            wanted.append((first, start))
        start += n
        if start >= end:
            break
    out: list[Decision] = []
    for first, row_start in wanted:
        (blob,) = conn.execute(
            "SELECT decisions FROM decision_batches WHERE job_id = ? AND first = ?", (job_id, first)
        ).fetchone()
        out += _decode(blob)[max(0, offset - row_start) : end - row_start]
    return out


def counts(conn: sqlite3.Connection, job_id: str) -> dict[str, int]:
    return dict(conn.execute("SELECT outcome, n FROM decision_counts WHERE job_id = ? AND n > 0", (job_id,)))


def migrate_row_per_decision(conn: sqlite3.Connection, rows: Iterable[tuple[str, Decision]]) -> None:
    """Databases written before batch rows: `rows` are (job id, decision) in job,
    recipient, then stored order."""
    jobs: dict[str, list[Decision]] = {}
    for job_id, decision in rows:
        jobs.setdefault(job_id, []).append(decision)
    for job_id, decisions in jobs.items():
        put(conn, job_id, decisions, 0.0)
