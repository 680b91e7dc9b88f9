"""The helpers every channel's (delivery, provider response, expected decision) table runs
through: post the job, wait for its decisions, return the first recipient's; and how many
attempts a row's outcome implies."""

from __future__ import annotations

from typing import Any


async def decide(running: Any, job: dict[str, Any]) -> dict[str, Any]:
    """The first decision, once the job is completed or waits on deferred messages (a
    transient failure retried past the in-memory window is `deferred: retrying`)."""
    status, body, _ = await running.post(job)
    assert status == 202, body
    return (await running.wait(body["job_id"], states=("completed", "waiting")))["decisions"][0]


def attempted(count: int, attempts: int, outcome: str) -> bool:
    """A final answer takes exactly `attempts`; a deferred one was retried in memory first
    (how often depends on the jittered backoff), so at least `attempts`."""
    return count >= attempts if outcome == "deferred" else count == attempts
