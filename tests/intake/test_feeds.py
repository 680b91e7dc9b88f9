"""Feeds for pull-based upstreams, per tenant, on both stores: `GET /v1/opt-outs` and
`GET /v1/invalid-tokens`, cursor-paged, each entry once."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.clock import FakeClock
from gateway.model.delivery import InvalidToken, Sent
from tests.policy.test_policy_pipeline import Provider, at, push_job, started
from tests.test_tenants import CRM_KEY, tenant_config


async def _feed(running: Any, path: str, key: str | None = None, **params: str) -> list[dict[str, Any]]:
    """Every entry of a feed, a page of 2 at a time."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    seen, cursor = [], None
    async with aiohttp.ClientSession(running.server.url, headers=headers or dict(running.http.headers)) as http:
        while True:
            query = {"limit": "2", **params, **({"cursor": cursor} if cursor else {})}
            async with http.get(path, params=query) as r:
                assert r.status == 200, await r.text()
                page = await r.json()
            seen += page[path.rsplit("/", 1)[1].replace("-", "_")]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen


async def test_opt_outs_feed_is_the_tenants_own(start, tmp_path, both_stores, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_CRM_KEYS", CRM_KEY)
    running = await start(tenant_config(tmp_path, **both_stores))
    s = running.gateway.store
    for n, key in enumerate(["a@x.example", "crm\x1fb@x.example", "c@x.example", "crm\x1fd@x.example", "e@x.example"]):
        await s.record_opt_out(key, f"camp{n}", 1_800_000_000 + n)
    mine = await _feed(running, "/v1/opt-outs")
    assert [(o["address"], o["campaign"]) for o in mine] == [
        ("a@x.example", "camp0"),
        ("c@x.example", "camp2"),
        ("e@x.example", "camp4"),
    ]
    assert mine[0]["at"] == "2027-01-15T08:00:00Z"
    theirs = await _feed(running, "/v1/opt-outs", CRM_KEY)
    assert [o["address"] for o in theirs] == ["b@x.example", "d@x.example"]
    await s.clear_opt_out("c@x.example")  # upstream cleared it: the feed shows what holds now
    assert [o["address"] for o in await _feed(running, "/v1/opt-outs")] == ["a@x.example", "e@x.example"]


async def test_invalid_tokens_feed_lists_dead_tokens_once(start, tmp_path, both_stores) -> None:
    Provider.received = []
    Provider.answer = staticmethod(lambda d: InvalidToken("Unregistered") if d.user_id in ("ben", "dan") else Sent())
    try:
        running = await started(start, tmp_path, FakeClock(at("2026-11-28T12:00:00Z")), **both_stores)
        _, body, _ = await running.post(push_job(["ana", "ben", "cat", "dan", "eve"], category="transactional"))
        await running.wait(body["job_id"])
    finally:
        Provider.answer = staticmethod(lambda d: Sent())
    dead = await _feed(running, "/v1/invalid-tokens")
    assert [(t["user_id"], t["channel"], t["job_id"]) for t in dead] == [
        ("ben", "apns", body["job_id"]),
        ("dan", "apns", body["job_id"]),
    ]
    assert all(t["token"] and t["at"].endswith("Z") for t in dead)
