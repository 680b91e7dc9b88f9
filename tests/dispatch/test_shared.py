"""Small sends to one channel in one turn of the event loop share an attempt: one channel
call for all, each sender getting its own answers, and nothing lost when a sender leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channel import Channel
from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.dispatch.dispatcher import SHARED_AT_MOST, Dispatcher
from gateway.hookspecs import hookimpl
from gateway.loader import plugin_manager
from gateway.metrics import Metrics
from gateway.model.delivery import Delivery, InvalidToken, PermanentFailure, Result, Sent


class Recording(Channel):
    """Answers by the device: `dead...` is invalid, `bad...` refused, the rest sent."""

    name = "recording"
    content_kind = "push"
    subscription_group = "push"
    requires_config = False
    calls: ClassVar[list[list[str]]] = []

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        Recording.calls.append([d.id for d in deliveries])
        await asyncio.sleep(0)
        return [answer_for(d) for d in deliveries]


def answer_for(delivery: Delivery) -> Result:
    if str(delivery.to).startswith("dead"):
        return InvalidToken("unregistered")
    if str(delivery.to).startswith("bad"):
        return PermanentFailure("refused")
    return Sent(delivery.id)


def delivery(job: str, n: int, to: str) -> Delivery:
    return Delivery(
        id=f"{job}.{n}.recording.0", job_id=job, campaign="c", category="transactional", recipient=n,
        user_id=f"u{n}", channel="recording", to=to, content=None,
    )  # fmt: skip


class Observer:
    seen: ClassVar[list[tuple[str, list[str]]]] = []

    @hookimpl
    def delivery_results(self, job_id, channel, deliveries, results) -> None:
        Observer.seen.append((job_id, [d.id for d in deliveries]))


def dispatcher(*plugins: object) -> Dispatcher:
    config = GatewayConfig()
    return Dispatcher(config.delivery, plugin_manager(config, plugins), Metrics(), FakeClock(1_800_000_000))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["ok", "dead", "bad"]), min_size=1, max_size=SHARED_AT_MOST + 3),
        min_size=1,
        max_size=12,
    )
)
def test_sends_of_one_turn_share_a_call_and_each_gets_its_own_answers(jobs: list[list[str]]) -> None:
    Recording.calls, Observer.seen = [], []
    sends = [[delivery(f"j{j}", n, f"{kind}{n}") for n, kind in enumerate(kinds)] for j, kinds in enumerate(jobs)]

    async def run() -> list[tuple[list[Result], list[tuple[str, Result]]]]:
        dispatch = dispatcher(Observer())
        channel = Recording({})

        async def one(batch: list[Delivery]) -> tuple[list[Result], list[tuple[str, Result]]]:
            told: list[tuple[str, Result]] = []
            results = await dispatch.send(channel, batch, lambda d, r: told.append((d.id, r)))
            return results, told  # type: ignore[return-value]

        return await asyncio.gather(*(one(batch) for batch in sends))

    outcomes = asyncio.run(run())
    for batch, (results, told) in zip(sends, outcomes, strict=True):
        assert results == [answer_for(d) for d in batch]  # each its own, in its order
        assert sorted(told, key=repr) == sorted(((d.id, answer_for(d)) for d in batch), key=repr)
    small = [batch for batch in sends if len(batch) <= SHARED_AT_MOST]
    assert len(Recording.calls) == (1 if small else 0) + (len(sends) - len(small))  # the small ones: one call
    assert sorted(i for call in Recording.calls for i in call) == sorted(d.id for b in sends for d in b)
    # Observers see each job's part on its own.
    assert sorted(i for _, ids in Observer.seen for i in ids) == sorted(d.id for b in sends for d in b)
    assert all({i.split(".")[0] for i in ids} == {job} for job, ids in Observer.seen)


async def test_the_others_still_go_when_the_first_sender_is_cancelled() -> None:
    Recording.calls = []
    dispatch = dispatcher()
    channel = Recording({})
    first = asyncio.ensure_future(dispatch.send(channel, [delivery("a", 0, "ok")]))
    second = asyncio.ensure_future(dispatch.send(channel, [delivery("b", 0, "ok")]))
    await asyncio.sleep(0)  # both waiting: the first for the turn's end, the second with it
    first.cancel()
    assert await second == [Sent("b.0.recording.0")]
    assert first.cancelled()
    assert Recording.calls == [["b.0.recording.0"]]


async def test_a_bug_in_a_shared_attempt_reaches_every_sender() -> None:
    dispatch = dispatcher()

    class Broken(Recording):
        async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
            raise RuntimeError("channel bug")

    channel = Broken({})
    results = await asyncio.gather(
        dispatch.send(channel, [delivery("a", 0, "ok")]), dispatch.send(channel, [delivery("b", 0, "ok")])
    )
    # A channel that raises fails what it had not answered, as for any batch: channel_error.
    assert [r[0].reason for r in results] == ["channel_error", "channel_error"]  # type: ignore[union-attr]
