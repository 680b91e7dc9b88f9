"""`GET /v1/jobs/{id}/decisions`: by outcome, channel and user, cursor-paged, on both
stores; finding one user or a rare outcome in 10,000 recipients reads only the rows that
hold them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.store import sqlite_decisions
from tests.policy.test_policy_pipeline import at, started


def mixed_job(n: int) -> dict[str, Any]:
    """apns and email to `n` users: even ones subscribed to push (sent), the others not
    (suppressed); nobody has an email subscription."""
    return {
        "campaign": "c",
        "channels": ["apns", "email"],
        "variants": [
            {"name": "d", "content": {"push": {"title": "Hi", "body": "x"}, "email": {"subject": "s", "text": "t"}}}
        ],
        "recipients": [
            {
                "user_id": f"u{i}",
                "email": f"u{i}@example.com",
                "subscriptions": {"push": "opted_in"} if i % 2 == 0 else {},
                "devices": [{"channel": "apns", "token": f"{i:064x}"}],
            }
            for i in range(n)
        ],
    }


async def _find(running: Any, job_id: str, **params: str) -> tuple[int, Any]:
    async with running.http.get(f"/v1/jobs/{job_id}/decisions", params=params) as r:
        return r.status, await r.json()


async def _all(running: Any, job_id: str, **params: str) -> list[dict[str, Any]]:
    seen, cursor = [], None
    while True:
        status, page = await _find(running, job_id, **params, **({"cursor": cursor} if cursor else {}))
        assert status == 200, page
        seen += page["decisions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_decisions_by_outcome_channel_and_user(start, tmp_path, both_stores) -> None:
    running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")), **both_stores)
    status, body, _ = await running.post(mixed_job(30))
    assert status == 202, body
    done = await running.wait(body["job_id"])
    everything = (await running.status(body["job_id"], limit="1000"))["decisions"]
    key = [(d["recipient"], d["channel"]) for d in everything]
    sent = await _all(running, body["job_id"], outcome="sent", limit="4")
    assert [(d["recipient"], d["channel"]) for d in sent] == [
        k for k, d in zip(key, everything, strict=True) if d["outcome"] == "sent"
    ]
    assert {d["user_id"] for d in sent} == {f"u{i}" for i in range(0, 30, 2)} and done["counts"]["sent"] == 15
    email = await _all(running, body["job_id"], channel="email", limit="7")
    assert [d["recipient"] for d in email] == list(range(30)) and {d["channel"] for d in email} == {"email"}
    both = await _all(running, body["job_id"], channel="apns", outcome="suppressed", limit="5")
    assert [d["user_id"] for d in both] == [f"u{i}" for i in range(1, 30, 2)]
    _, mine = await _find(running, body["job_id"], user_id="u7")
    assert [(d["channel"], d["outcome"]) for d in mine["decisions"]] == [
        ("apns", "suppressed"),
        ("email", "suppressed"),
    ]
    assert mine["decisions"][0]["at"].endswith("Z")
    assert (await _find(running, body["job_id"], user_id="nobody"))[1] == {"decisions": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "path"), [({"outcome": "sending"}, "outcome"), ({"cursor": "x"}, "cursor"), ({"limit": "0"}, "limit")]
)
async def test_bad_decision_queries_are_400s_naming_them(start, tmp_path, params, path) -> None:
    running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")))
    _, body, _ = await running.post(mixed_job(1))
    status, answer = await _find(running, body["job_id"], **params)
    assert status == 400 and answer["path"] == path
    assert (await _find(running, "no-such-job"))[0] == 404


async def test_one_user_among_10000_reads_one_row(start, tmp_path, monkeypatch) -> None:
    running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")), pipeline={"batch_size": 500})
    job = mixed_job(10_000)
    job["channels"] = ["apns"]
    for r in job["recipients"]:
        r["subscriptions"] = {"push": "opted_in"}
    job["recipients"][7_777]["subscriptions"] = {}  # the one suppressed
    _, body, _ = await running.post(job)
    await running.wait(body["job_id"], timeout=60)
    decoded = []
    real = sqlite_decisions._decode
    monkeypatch.setattr(sqlite_decisions, "_decode", lambda blob: decoded.append(1) or real(blob))
    _, mine = await _find(running, body["job_id"], user_id="u9001")
    assert [d["recipient"] for d in mine["decisions"]] == [9001] and len(decoded) == 1
    decoded.clear()
    _, rare = await _find(running, body["job_id"], outcome="suppressed")
    assert [d["user_id"] for d in rare["decisions"]] == ["u7777"] and len(decoded) == 1
