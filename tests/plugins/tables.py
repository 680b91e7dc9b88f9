"""The one helper every channel's (delivery, provider response, expected decision) table
runs through: post the job, wait for it, return the first recipient's decision."""

from __future__ import annotations

from typing import Any


async def decide(running: Any, job: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = await running.post(job)
    assert status == 202, body
    return (await running.wait(body["job_id"]))["decisions"][0]
