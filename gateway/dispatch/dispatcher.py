"""Sending one channel's share of a batch: the core's side of every channel.

For each delivery, one final answer: `Sent`, `PermanentFailure`, `InvalidToken`, or
`Postponed` (it waits in the store: its provider's circuit is open, it is being retried
past the in-memory window, or its channel is saturated). Never a `TransientFailure`:
those are retried here, as `retry.RetryPolicy` says, with the same delivery id every time
(the provider's idempotency key).

Deliveries go out in chunks that each hold part of the channel's in-flight budget
(`budget.InFlight`, shared by every batch of every job), and each chunk first asks the
circuit breakers of its deliveries' providers (`breaker.Breaker`): a provider that opens
mid-batch holds back the rest of the batch at once. Answers are passed on as they arrive
(`answered`), so the pipeline can record them before the batch is over.

Small sends to one channel made in the same turn of the event loop (jobs of one recipient
come in groups, as their accepts share a commit) share one attempt: one channel call, one
budget grant, one HTTP/2 batch for all of them (`Shared`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

import pluggy

from gateway.channel import Channel, Gate, answers_to
from gateway.clock import Clock
from gateway.config import DeliveryConfig, seconds
from gateway.dispatch.breaker import Breaker
from gateway.dispatch.budget import InFlight
from gateway.dispatch.retry import Postponed, RetryPolicy
from gateway.dispatch.trouble import Trouble
from gateway.loader import observe
from gateway.metrics import Metrics
from gateway.model.decision import CHANNEL_ERROR, PROVIDER_UNAVAILABLE
from gateway.model.delivery import Delivery, PermanentFailure, Result, Sent, TransientFailure

log = logging.getLogger(__name__)
Answer = Result | Postponed
Answered = Callable[[Delivery, Result], None]
Attempted = list[Result | Postponed | PermanentFailure]
# Sends of at most this many deliveries share an attempt with the channel's other small
# sends of the same turn; larger ones are a batch already.
SHARED_AT_MOST = 8


class Shared:
    """Small sends to one channel in one turn of the event loop. The first to come waits
    the turn out, then makes one attempt for all of them; each of the others waits for its
    part. What the channel answers is per delivery, so sharing a call changes no decision
    (but a channel that raises fails its whole call, shared or not: `docs/plugins.md`)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[tuple[list[Delivery], Answered | None, asyncio.Future[Attempted]]] = []

    def join(self, batch: list[Delivery], answered: Answered | None) -> asyncio.Future[Attempted]:
        future: asyncio.Future[Attempted] = asyncio.get_running_loop().create_future()
        self.parts.append((batch, answered, future))
        return future


class Dispatcher:
    def __init__(
        self,
        config: DeliveryConfig,
        pm: pluggy.PluginManager,
        metrics: Metrics,
        clock: Clock,
        policy: RetryPolicy | None = None,
    ):
        self.config = config
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.policy = policy or RetryPolicy(config)
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._budgets: dict[str, InFlight] = {}
        self._limits: dict[str, dict[int, Gate]] = {}  # the channels' map_bounded limiters
        self._shared: dict[str, Shared] = {}  # by channel: small sends of this turn
        self._detached: set[asyncio.Task[None]] = set()  # shared attempts whose first sender left
        self.trouble = Trouble()  # failures by provider, logged once per interval

    # -- breakers and budgets ---------------------------------------------------------------
    def breaker(self, channel: Channel, delivery: Delivery) -> Breaker:
        """The circuit of the provider that answers `delivery`."""
        key = (channel.name, channel.provider(delivery))
        found = self._breakers.get(key)
        if found is None:
            name = key[0] if key[1] == key[0] else f"{key[0]}:{key[1]}"
            found = self._breakers[key] = Breaker(
                name, self.config.breaker_failures, seconds(self.config.breaker_cooldown)
            )
        return found

    def any_open(self, channel: str) -> bool:
        """Is any of this channel's providers' circuits open (or probing)?"""
        return any(b.is_open for (name, _), b in self._breakers.items() if name == channel)

    def states(self) -> dict[str, dict[str, str]]:
        """Per channel, its providers' circuits: `open` (deliveries wait in the store),
        `failing` (transient failures since its last success) or `up`."""
        found: dict[str, dict[str, str]] = {}
        for (channel, provider), breaker in self._breakers.items():
            state = "open" if breaker.is_open else "failing" if breaker.failing else "up"
            found.setdefault(channel, {})[provider] = state
        return found

    def breaker_gauge(self) -> dict[tuple[str, ...], float]:
        return {key: float(b.is_open) for key, b in self._breakers.items()}

    def held(self, channel: Channel, delivery: Delivery, now: float) -> Postponed | PermanentFailure | None:
        """Postponed when the delivery's provider is open: it is not attempted."""
        breaker = self.breaker(channel, delivery)
        if breaker.allows(now):
            return None
        return self.policy.postponed(delivery, breaker.retry_at(), PROVIDER_UNAVAILABLE)

    def budget(self, channel: Channel) -> InFlight:
        found = self._budgets.get(channel.name)
        if found is None:
            limit = (
                self.config.concurrency_per_channel.get(channel.name)
                or channel.default_concurrency
                or self.config.concurrency
            )
            found = self._budgets[channel.name] = InFlight(limit)
        return found

    # -- sending ------------------------------------------------------------------------
    async def send(
        self, channel: Channel, deliveries: Sequence[Delivery], answered: Answered | None = None
    ) -> list[Answer]:
        """One final answer per delivery; `answered(d, r)` is told of each final answer
        from the provider as it arrives."""
        final: list[Answer | None] = [None] * len(deliveries)
        pending = list(range(len(deliveries)))
        started = self.clock.now()
        while pending:
            batch = [deliveries[i] for i in pending]
            if len(batch) <= SHARED_AT_MOST:
                results = await self._shared_attempt(channel, batch, answered)
            else:
                results = await self._attempt(channel, batch, answered)
            now = self.clock.now()
            retry: list[int] = []
            delay = 0.0
            for i, result in zip(pending, results, strict=True):
                if type(result) is not TransientFailure:
                    final[i] = result
                    continue
                self.metrics.provider_errors.inc(channel.name, result.reason)
                step = self.policy.after(deliveries[i], result, now, started)
                if isinstance(step, float):
                    retry.append(i)
                    delay = max(delay, step)
                else:
                    final[i] = step
            if not retry:
                break
            await self.clock.sleep(delay)
            self.metrics.retries.inc(channel.name, by=len(retry))
            for i in retry:
                deliveries[i].attempt += 1
            pending = retry
        return final  # type: ignore[return-value]  # every slot was filled

    async def _shared_attempt(self, channel: Channel, batch: list[Delivery], answered: Answered | None) -> Attempted:
        """One attempt of these deliveries, made together with the channel's other small
        sends of this turn."""
        shared = self._shared.get(channel.name)
        if shared is not None:  # another send waits this turn out: go with it
            return await shared.join(batch, answered)
        shared = self._shared[channel.name] = Shared()
        mine = shared.join(batch, answered)
        try:
            await asyncio.sleep(0)  # the rest of this turn's small sends join
        except asyncio.CancelledError:  # the others still go: on their own
            del self._shared[channel.name]
            if len(shared.parts) > 1:
                task = asyncio.ensure_future(self._attempt_parts(channel, shared.parts[1:]))
                self._detached.add(task)
                task.add_done_callback(self._detached.discard)
            raise
        del self._shared[channel.name]
        await self._attempt_parts(channel, shared.parts)
        return await mine  # its answers, or what ended the attempt

    async def _attempt_parts(
        self, channel: Channel, parts: list[tuple[list[Delivery], Answered | None, asyncio.Future[Attempted]]]
    ) -> None:
        """One attempt for every part's deliveries; each part's future gets its answers (or
        what ended the attempt)."""
        if len(parts) == 1:
            batch, answered, future = parts[0]
        else:
            batch = [delivery for part in parts for delivery in part[0]]
            routes = {id(delivery): part[1] for part in parts if part[1] is not None for delivery in part[0]}

            def answered(delivery: Delivery, result: Result) -> None:
                route = routes.get(id(delivery))
                if route is not None:
                    route(delivery, result)

        try:
            results = await self._attempt(channel, batch, answered)
        except asyncio.CancelledError:  # shut down past its timeout: the others too
            for _, _, future in parts:
                future.cancel()
            raise
        except Exception as exc:  # a bug: each part's sender raises it
            for _, _, future in parts:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for part, _, future in parts:
            if not future.done():
                future.set_result(results[start : start + len(part)])
            start += len(part)

    async def _attempt(self, channel: Channel, batch: list[Delivery], answered: Answered | None) -> Attempted:
        """One attempt of each delivery, in chunks sent as the channel's in-flight budget
        frees (side by side); each chunk first asks its deliveries' breakers."""
        budget = self.budget(channel)
        results: list[Result | Postponed | PermanentFailure | None] = [None] * len(batch)
        least = max(1, budget.limit // 8)  # no chunk of one: a few slots free at a time
        pending = deque(range(len(batch)))
        chunks: list[asyncio.Task[None]] = []
        try:
            while pending:
                granted = await budget.acquire(len(pending), min(len(pending), least))
                now = self.clock.now()
                check = self.any_open(channel.name)  # the usual case: no circuit to ask
                chunk: list[int] = []
                while pending and len(chunk) < granted:
                    j = pending.popleft()
                    held = self.held(channel, batch[j], now) if check else None
                    if held is None:
                        chunk.append(j)
                    else:
                        results[j] = held
                budget.release(granted - len(chunk))
                if chunk and not pending and not chunks:  # all in one chunk (a small batch): no task
                    await self._chunk(channel, batch, chunk, results, answered)
                elif chunk:
                    chunks.append(asyncio.create_task(self._chunk(channel, batch, chunk, results, answered)))
            if chunks:
                await asyncio.gather(*chunks)
        except BaseException:
            for task in chunks:
                task.cancel()
            await asyncio.gather(*chunks, return_exceptions=True)
            raise
        return results  # type: ignore[return-value]  # every slot was filled

    async def _chunk(
        self,
        channel: Channel,
        batch: list[Delivery],
        chunk: list[int],
        results: list[Result | Postponed | PermanentFailure | None],
        answered: Answered | None,
    ) -> None:
        """One chunk's call, holding its part of the budget until its answers are in."""
        going = [batch[j] for j in chunk]
        now = self.clock.now()
        for delivery in going:
            if delivery.first_attempt is None:
                delivery.first_attempt = now
        try:
            answers = await self._call(channel, going, answered)
        finally:
            self.budget(channel).release(len(going))
        self._observe(channel, going, answers)
        now = self.clock.now()
        for j, delivery, answer in zip(chunk, going, answers, strict=True):
            results[j] = answer
            breaker = self.breaker(channel, delivery)
            breaker.record(delivery.id, answer, now)
            if type(answer) is not Sent:
                self.trouble.failure(breaker.name, answer)

    def _observe(self, channel: Channel, going: list[Delivery], answers: list[Result]) -> None:
        """The `delivery_results` hook, each job's part of a chunk on its own (a shared
        attempt holds several jobs' deliveries)."""
        if not self.pm.hook.delivery_results.get_hookimpls():
            return
        by_job: dict[str, tuple[list[Delivery], list[Result]]] = {}
        for delivery, answer in zip(going, answers, strict=True):
            part = by_job.setdefault(delivery.job_id, ([], []))
            part[0].append(delivery)
            part[1].append(answer)
        for job_id, (deliveries, theirs) in by_job.items():
            observe(
                self.pm, "delivery_results", job_id=job_id, channel=channel.name, deliveries=deliveries, results=theirs
            )

    async def _call(self, channel: Channel, batch: list[Delivery], answered: Answered | None) -> list[Result]:
        """`channel.send_batch`, with its answers passed on as they arrive. A channel that
        raises fails the deliveries it had not answered yet as channel_error: which of them
        went out is unknown, so none is sent again, and it is no fault of a provider."""
        known: dict[int, Result] = {}

        def sink(delivery: Delivery, result: Result) -> None:
            known[id(delivery)] = result
            if answered is not None and type(result) is not TransientFailure:
                answered(delivery, result)

        try:
            with answers_to(sink, self._limits.setdefault(channel.name, {})):
                results = list(await channel.send_batch(batch))
        except Exception as exc:
            log.exception("channel %s raised on a batch of %d deliveries", channel.name, len(batch))
            error = PermanentFailure(CHANNEL_ERROR, f"{type(exc).__name__}: {exc}"[:300])
            results = [known.get(id(d), error) for d in batch]
        if len(results) != len(batch):
            log.error("channel %s returned %d results for %d deliveries", channel.name, len(results), len(batch))
            violation = PermanentFailure("channel_contract_violation")
            results = [known.get(id(d), violation) for d in batch]
        if answered is not None:  # a channel that reports nothing as it goes: all of them now
            for delivery, result in zip(batch, results, strict=True):
                if id(delivery) not in known and type(result) is not TransientFailure:
                    answered(delivery, result)
        return results
