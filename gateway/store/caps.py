"""The embedded store's frequency-cap ledger, in memory (exact within the one process the
embedded store serves); `gateway.store.sqlite` makes each reservation durable before
anything is sent and reloads the ledger at start-up.

Per (rule, user) it keeps the instants of admitted sends. `reserve` checks every rule of a
request and records it in all of them or in none, in one step with no await in between,
so concurrent jobs cannot both take the last slot.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.model.caps import CapOutcome, CapRequest, Check, Denied, Granted, new_reservation_id

_NO_RULES = Granted(None)


@dataclass
class CapLedger:
    """Per (rule, user): sorted instants of admitted sends, with their reservation ids."""

    logs: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)
    where: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # reservation -> its logs

    def reserve(
        self, requests: Sequence[CapRequest], now: float
    ) -> tuple[list[CapOutcome], list[tuple[str, str, str, float]]]:
        """Outcomes, and the ledger rows added: (id, rule, user, at)."""
        outcomes: list[CapOutcome] = []
        added: list[tuple[str, str, str, float]] = []
        check_one = self._check
        for request in requests:
            checks = request.checks
            if not checks:
                outcomes.append(_NO_RULES)
                continue
            user = request.user
            denied: Denied | None = None
            for check in checks:
                found = check_one(user, check)
                # The strictest decides: a dropping rule over a deferring one, then the
                # latest time a slot frees.
                if found is not None and (
                    denied is None
                    or (found.action == "drop", found.free_at) > (denied.action == "drop", denied.free_at)
                ):
                    denied = found
            if denied is not None:
                outcomes.append(denied)
                continue
            reservation = new_reservation_id()
            for check in checks:
                self._add(check.rule, user, now, reservation)
                added.append((reservation, check.rule, user, now))
            outcomes.append(Granted(reservation))
        return outcomes, added

    def simulate(self, requests: Sequence[CapRequest], now: float) -> list[CapOutcome]:
        """What `reserve` would answer, in order (each grant counting against the next),
        without taking anything: on a scratch copy of the logs the requests touch."""
        touched = {(check.rule, request.user) for request in requests for check in request.checks}
        scratch = CapLedger({key: list(self.logs[key]) for key in touched if key in self.logs})
        return scratch.reserve(requests, now)[0]

    def _check(self, user: str, check: Check) -> Denied | None:
        log = self.logs.get((check.rule, user), [])
        # A rolling window is (now - period, now]: a send exactly one period ago has left
        # it. A calendar window includes its first instant (local midnight).
        first = _after(log, check.since) if check.period is not None else bisect.bisect_left(log, (check.since, ""))
        count = len(log) - first
        if count < check.limit:
            return None
        if check.reset is not None:
            free_at = check.reset
        elif check.limit == 0:
            free_at = float("inf")
        else:
            # The slot frees when enough of the oldest entries leave the rolling window.
            free_at = log[first + count - check.limit][0] + (check.period or 0)
        return Denied(check.rule, check.action, free_at)

    def _add(self, rule: str, user: str, at: float, reservation: str) -> None:
        bisect.insort(self.logs.setdefault((rule, user), []), (at, reservation))
        self.where.setdefault(reservation, []).append((rule, user))

    def refund(self, reservations: Iterable[str]) -> None:
        for reservation in reservations:
            for key in self.where.pop(reservation, ()):
                log = self.logs.get(key)
                if log is not None:
                    log[:] = [(at, r) for at, r in log if r != reservation]

    def load(self, rows: Iterable[tuple[str, str, str, float]]) -> None:
        for reservation, rule, user, at in rows:
            self._add(rule, user, at, reservation)

    def prune(self, before: float) -> None:
        """Forget sends older than any window can reach."""
        for key in list(self.logs):
            log = self.logs[key]
            cut = bisect.bisect_left(log, (before, ""))
            for _, reservation in log[:cut]:
                self.where.pop(reservation, None)
            if cut < len(log):
                self.logs[key] = log[cut:]
            else:
                del self.logs[key]

    def count(self, rule: str, user: str, since: float) -> int:
        """Sends after `since` (a rolling window's count)."""
        log = self.logs.get((rule, user), [])
        return len(log) - _after(log, since)


def _after(log: list[tuple[float, str]], since: float) -> int:
    """Index of the first entry later than `since` (reservation ids are hex, below "~")."""
    return bisect.bisect_right(log, (since, "~"))
