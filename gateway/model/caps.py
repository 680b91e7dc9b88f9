"""Frequency-cap reservations as the store sees them: what to check for one message, and
what came of it. The rules that produce the checks live in `gateway.policy.caps`; the
stores enforce them atomically (an in-memory ledger for the embedded store, a Lua script
on Redis)."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass


@dataclass(slots=True)
class Check:
    """One rule to satisfy for one message."""

    rule: str
    since: float  # window start
    limit: int
    period: float | None
    reset: float | None  # calendar: when the window restarts
    action: str


@dataclass(slots=True)
class CapRequest:
    user: str
    checks: list[Check]


@dataclass(slots=True)
class Granted:
    reservation: str | None  # None when no rule applied


@dataclass(slots=True)
class Denied:
    rule: str
    action: str  # drop | defer
    free_at: float  # when a slot frees


CapOutcome = Granted | Denied

# Reservation ids: unique across processes and restarts, far cheaper than uuid4 per send.
_ID_PREFIX = secrets.token_hex(6)
_ids = itertools.count()


def new_reservation_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):x}"
