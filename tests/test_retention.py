"""Retention and erasure on both stores: ended jobs are forgotten after `retention.jobs`;
`DELETE /v1/users/{id}` erases a user's profile data from every job of the tenant, ended or
not (a deferred message released afterwards finds no device)."""

from __future__ import annotations

import msgspec
import pytest

from gateway.clock import FakeClock
from gateway.config import seconds
from gateway.retention import purge_ended
from tests.policy.test_policy_pipeline import Provider, at, push_job, quiet, started


async def test_ended_jobs_are_forgotten_after_the_retention(start, tmp_path, both_stores) -> None:
    clock = FakeClock(at("2026-11-28T22:30:00Z"))  # quiet hours in Paris: one job waits
    running = await started(start, tmp_path, clock, **quiet(), **both_stores)
    _, old, _ = await running.post(push_job(["ana"], category="transactional"))
    _, waiting, _ = await running.post(push_job(["ben"]))
    await running.wait(old["job_id"])
    await running.wait(waiting["job_id"], states=("waiting",))
    clock.t += 20 * 86400
    _, recent, _ = await running.post(push_job(["cat"], category="transactional"))
    await running.wait(recent["job_id"])
    clock.t += 11 * 86400  # the first job ended 31 days ago, the last 11
    gw = running.gateway
    assert gw.config.retention.jobs == "30d"
    purged = await purge_ended(gw.store, clock.now() - seconds(gw.config.retention.jobs))
    assert purged == 1
    async with running.http.get(f"/v1/jobs/{old['job_id']}") as r:
        assert r.status == 404
    assert (await running.status(recent["job_id"]))["state"] == "completed"
    assert (await running.status(waiting["job_id"]))["state"] == "waiting"  # never while it has a schedule
    with pytest.raises(KeyError):
        await gw.store.job_body(old["job_id"])


async def test_erasing_a_user_removes_their_profile_from_every_job(start, tmp_path, both_stores) -> None:
    Provider.received = []
    clock = FakeClock(at("2026-11-28T22:30:00Z"))
    running = await started(start, tmp_path, clock, **quiet(), **both_stores)
    job = push_job(["ana", "ben"])
    job["recipients"][0].update(email="ana@example.com", attributes={"first_name": "Ana"})
    _, body, _ = await running.post(job)
    await running.wait(body["job_id"], states=("waiting",))
    _, done, _ = await running.post(dict(push_job(["ana"], category="transactional"), campaign="other"))
    await running.wait(done["job_id"])
    async with running.http.delete("/v1/users/ana") as r:
        assert r.status == 200 and await r.json() == {"user_id": "ana", "jobs": 2}
    for job_id in (body["job_id"], done["job_id"]):
        stored = msgspec.json.decode(await running.gateway.store.job_body(job_id))
        assert stored["recipients"][0] == {"user_id": "ana"}
    first = msgspec.json.decode(await running.gateway.store.job_body(body["job_id"]))
    assert first["recipients"][1]["user_id"] == "ben" and first["recipients"][1]["devices"]  # others kept
    clock.t = at("2026-11-29T08:00:00Z")  # the deferred messages come due: ana's has nowhere to go
    await running.gateway.scheduler.run_due()
    final = await running.wait(body["job_id"])
    assert [(d["user_id"], d["outcome"], d.get("reason")) for d in final["decisions"]] == [
        ("ana", "suppressed", "not_subscribed"),
        ("ben", "sent", None),
    ]
    assert [d.user_id for d in Provider.received] == ["ana", "ben"]  # the other job's, before; ben's release
