"""Routing: which of a recipient's ready channels a batch delivers to, and in what order.

`all` delivers on every channel at once (cross-device). `first` is a fallback ladder: a
channel at a time, moving a recipient on only while it has not been reached (sent) or
put on hold (deferred); the channels after that read `fallback_not_needed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from gateway.model import decision as d
from gateway.pipeline.batch import Batch, Target
from gateway.pipeline.plan import Ready
from gateway.policy.engine import Verdict

Deliver = Callable[[Batch, list[Target]], Awaitable[None]]


def ready_targets(batch: Batch) -> list[Target]:
    """Every (recipient, channel) of the batch that policy let through."""
    return [(i, c) for i, plan in batch.plans.items() for c, step in plan.channels.items() if isinstance(step, Ready)]


async def route_all(batch: Batch, channels: Sequence[str], deliver: Deliver) -> None:
    await deliver(batch, ready_targets(batch))


async def route_first(batch: Batch, channels: Sequence[str], deliver: Deliver) -> None:
    pending = set(batch.plans)
    for position, channel in enumerate(channels):
        await deliver(
            batch, [(i, channel) for i in sorted(pending) if isinstance(batch.plans[i].channels[channel], Ready)]
        )
        for i in sorted(pending):
            outcome = batch.decided[(i, channel)].outcome
            if outcome not in ("sent", "deferred"):
                continue  # not reached here: the next channel down the ladder
            pending.discard(i)
            detail = None if outcome == "sent" else f"waiting for {channel}"
            for later in channels[position + 1 :]:
                batch.decide((i, later), Verdict("suppressed", d.NOT_NEEDED, detail))
        if not pending:
            return


ROUTES: dict[str, Callable[[Batch, Sequence[str], Deliver], Awaitable[None]]] = {
    "all": route_all,
    "first": route_first,
}
