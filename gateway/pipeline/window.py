"""A job's batches in flight: how many, and how far the cursor may move.

Batches of a job are pipelined: the next is planned and sent while earlier ones wait for
their providers. Each channel of the job has a lane counting the batches whose share of
that channel is being sent; a lane is full at the number of batches that fills the
channel's in-flight budget, plus one queued behind them. The next batch is planned while
any lane has room: a channel with a slow or hanging provider queues its shares (its
breaker soon holds them back) while the job's other channels go on and record, up to
`MAX_BATCHES` batches under way; when every lane is full, planning waits, so a slow
provider slows its own jobs without piling work up in memory.

Batches complete out of order (their channels record on their own), but the stored cursor
only moves over a contiguous run of complete batches: after a crash, everything from the
cursor on is run again, and the recorded answers keep what was sent from going twice.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

from gateway.model.job import Recipient

MAX_BATCHES = 16  # a job's batches in flight at most, whatever its budgets


class Lane:
    __slots__ = ("busy", "capacity")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.busy = 0  # batches whose share of this channel is being sent

    @property
    def full(self) -> bool:
        return self.busy >= self.capacity


class Window:
    def __init__(self, cursor: int, budgets: dict[str, int], batch_size: int, by_channel: bool):
        self.lanes = {name: Lane(math.ceil(limit / batch_size) + 1) for name, limit in budgets.items()}
        # Batches under way at most: with lanes, the lanes are the bound and this only
        # caps the writes a job can have queued; without (routing `first` sends a batch's
        # channels in turn), as many as the largest lane.
        widest = max((lane.capacity for lane in self.lanes.values()), default=2)
        self.limit = MAX_BATCHES if by_channel else min(MAX_BATCHES, widest)
        self.spans: list[Span] = []  # batches started and not yet passed by the cursor, in order
        self.cursor = cursor  # as stored
        self._changed = asyncio.Event()

    # -- room ------------------------------------------------------------------------
    @property
    def open(self) -> bool:
        """Fewer than `limit` batches under way, and a lane with room (or no lanes: a job
        whose channels are none of ours)."""
        if sum(not span.done for span in self.spans) >= self.limit:
            return False
        return not self.lanes or any(not lane.full for lane in self.lanes.values())

    async def room(self) -> None:
        while not self.open:
            self._changed.clear()
            await self._changed.wait()

    def enter(self, channel: str) -> None:
        lane = self.lanes.get(channel)
        if lane is not None:
            lane.busy += 1

    def leave(self, channel: str) -> None:
        lane = self.lanes.get(channel)
        if lane is not None:
            lane.busy -= 1
            self._changed.set()

    def ended(self, span: Span) -> Callable[[object], None]:
        """A done-callback for the batch's task: whatever way it ended, the run goes on."""

        def callback(_: object) -> None:
            span.admitted.set()
            self._changed.set()

        return callback

    async def after_earlier_with(self, span: Span, recipients: Sequence[Recipient]) -> None:
        """Routing `first`: a batch takes its caps after the batches before it that hold any
        of its users have taken theirs. A user's messages are then capped batch by batch and,
        within a batch, channel by channel, as preview counts them; without this a later batch
        with nothing to send on the first channel could take a user's cap from an earlier one
        still waiting on that channel's provider."""
        earlier = [s for s in self.spans[: self.spans.index(span)] if not s.routed.is_set()]
        if not earlier:
            return
        users = span.users_in(recipients)
        for other in earlier:
            if not other.routed.is_set() and not users.isdisjoint(other.users_in(recipients)):
                await other.routed.wait()

    # -- the cursor ------------------------------------------------------------------
    def start(self, lo: int, hi: int) -> Span:
        span = Span(lo, hi)
        self.spans.append(span)
        return span

    def cursor_with(self, span: Span) -> int:
        """The cursor to store with the last write of `span`: the end of the run of
        complete batches it closes, or -1 while an earlier batch is under way."""
        end = -1
        for other in self.spans:
            if other is span or other.done:
                end = other.hi
            elif other.lo < span.lo:
                return -1
            else:
                break
        return end

    def complete(self, span: Span) -> tuple[int, list[Span]]:
        """`span` is recorded: the cursor the stored one must now reach (-1: it does not
        move), and the batches it moves over."""
        span.done = True
        passed: list[Span] = []
        while self.spans and self.spans[0].done:
            passed.append(self.spans.pop(0))
        self._changed.set()
        return (passed[-1].hi if passed else -1), passed


class Span:
    """One batch of a job: its recipients and its record writes."""

    __slots__ = ("_users", "admitted", "done", "hi", "inflight", "lo", "routed", "unissued")

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.admitted = asyncio.Event()  # it has taken its lanes: the next may be planned
        self.routed = asyncio.Event()  # routing `first`: its ladder is walked, its caps taken
        self._users: frozenset[str] | None = None
        self.done = False
        self.unissued = 0  # record writes not yet issued
        self.inflight = 0  # issued, not yet committed

    def users_in(self, recipients: Sequence[Recipient]) -> frozenset[str]:
        if self._users is None:
            self._users = frozenset(r.user_id for r in recipients[self.lo : self.hi])
        return self._users
