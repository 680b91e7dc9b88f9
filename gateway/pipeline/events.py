"""Status callbacks as the pipeline writes them: the events of one record, for the outbox
the store writes in the same commit as the decisions (so an event exists exactly when its
decisions do). Nothing is built for a tenant without callbacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import msgspec

from gateway.model.decision import Decision, decision_json
from gateway.pipeline.batch import RunningJob
from gateway.store.base import Outbox, OutboxEvent

_encode = msgspec.json.Encoder().encode
END_EVENTS = frozenset({"job.completed", "job.cancelled"})


def event_id() -> str:
    return "evt_" + os.urandom(12).hex()


class Subscriptions:
    """Which events each tenant's callback takes (`[callbacks.<tenant>] events`)."""

    def __init__(self, wanted: dict[str, frozenset[str]] | None = None, notify: Callable[[str], None] | None = None):
        self.wanted = wanted or {}
        self.notify = notify  # told of each tenant with events on their way

    def outbox(self, running: RunningJob, decisions: Sequence[Decision], now: float) -> Outbox | None:
        types = self.wanted.get(running.tenant)
        if not types:
            return None
        job = {"job_id": running.id, "campaign": running.job.campaign}
        events = []
        if "decisions" in types and decisions:
            data = _encode({**job, "decisions": [decision_json(d) for d in decisions]})
            events.append(OutboxEvent(id=event_id(), type="decisions", data=data, at=now, job_id=running.id))
        if "token.invalidated" in types:
            events += [
                OutboxEvent(
                    id=event_id(),
                    type="token.invalidated",
                    data=_encode({**job, "user_id": d.user_id, "channel": d.channel, "token": token}),
                    at=now,
                    job_id=running.id,
                )
                for d in decisions
                if d.invalid_tokens
                for token in d.invalid_tokens
            ]
        on_end = None
        if types & END_EVENTS:  # its type is set by how the job ends, when a write ends it
            on_end = OutboxEvent(id=event_id(), type="job.completed", data=_encode(job), at=now, job_id=running.id)
        if self.notify is not None:
            self.notify(running.tenant)
        return Outbox(tenant=running.tenant, events=events, on_end=on_end)

    def opt_out(self, tenant: str, address: str, campaign: str, now: float) -> Outbox | None:
        if "opt_out.recorded" not in self.wanted.get(tenant, ()):
            return None
        data = _encode({"address": address, "campaign": campaign})
        if self.notify is not None:
            self.notify(tenant)
        return Outbox(tenant=tenant, events=[OutboxEvent(id=event_id(), type="opt_out.recorded", data=data, at=now)])
