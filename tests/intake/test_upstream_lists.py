"""Listing jobs (`GET /v1/jobs`) on both stores: filters, newest first, cursor paging that
visits every job once, tenant scope."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import make_config, speaker_job


@pytest.fixture(params=["sqlite", "redis"])
def store_config(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "sqlite":
        return lambda url: make_config(tmp_path, url)
    redis_url = request.getfixturevalue("redis_url")
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return lambda url: make_config(tmp_path, url, store={"url": redis_url, "key_prefix": prefix})


async def _list(running: Any, **params: str) -> tuple[int, Any]:
    async with running.http.get("/v1/jobs", params=params) as r:
        return r.status, await r.json()


async def test_jobs_are_listed_newest_first_filtered_and_paged(start, receiver, store_config) -> None:
    running = await start(store_config(receiver.url))
    ids = []
    for n in range(7):
        _, body, _ = await running.post(speaker_job(1, campaign="even" if n % 2 == 0 else "odd"))
        ids.append(body["job_id"])
        await running.wait(body["job_id"])
    status, page = await _list(running)
    assert status == 200 and [j["job_id"] for j in page["jobs"]] == ids[::-1] and page["next_cursor"] is None
    first = page["jobs"][0]
    assert first["state"] == "completed" and first["counts"]["sent"] == 1 and first["created_at"].endswith("Z")
    # Paging by 2 visits every job once, in order.
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page = await _list(running, **params)
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    _, page = await _list(running, campaign="odd")
    assert [j["job_id"] for j in page["jobs"]] == [ids[5], ids[3], ids[1]]
    _, page = await _list(running, campaign="even", limit="2")
    _, rest = await _list(running, campaign="even", limit="2", cursor=page["next_cursor"])
    assert [j["job_id"] for j in page["jobs"] + rest["jobs"]] == [ids[6], ids[4], ids[2], ids[0]]
    middle = (await running.status(ids[3]))["created_at"]
    _, page = await _list(running, created_after=middle)
    assert [j["job_id"] for j in page["jobs"]] == ids[4:][::-1]
    _, page = await _list(running, state="accepted")
    assert page["jobs"] == []


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"state": "done"}, "state"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
async def test_bad_list_queries_are_400s_naming_them(api, params, path) -> None:
    status, body = await _list(api, **params)
    assert status == 400 and body["path"] == path
