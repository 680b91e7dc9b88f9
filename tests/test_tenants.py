"""Tenants: an API key belongs to one; jobs, decisions, idempotency keys, opt-outs and caps
are its own; another tenant's job is a 404; an admin key sees all."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, key_table
from tests.conftest import API_KEY, make_config, speaker_job
from tests.waiting import until

CRM_KEY = "crm-key-1"
ADMIN_KEY = "admin-key-1"


@pytest.fixture
def tenant_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_CRM_KEYS", f"{CRM_KEY}\ncrm-key-2")
    monkeypatch.setenv("GATEWAY_ADMIN_KEYS", ADMIN_KEY)


def tenant_config(tmp_path: Any, receiver_url: str | None = None, **sections: Any) -> Any:
    return make_config(
        tmp_path, receiver_url, tenants={"crm": {"api_keys": {"env": "GATEWAY_TEST_CRM_KEYS"}}}, **sections
    )


async def _as(running: Any, key: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(running.server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.request(method, path, **kwargs) as r:
            return r.status, await r.json() if r.content_type == "application/json" else None


async def _decided(running: Any, key: str, job_id: str) -> Any:
    async def done() -> Any:
        status, view = await _as(running, key, "GET", f"/v1/jobs/{job_id}")
        return view if status == 200 and view["state"] == "completed" else None

    await until(done, what=f"job {job_id} completed")
    return await done()


async def test_another_tenants_job_is_not_found_and_an_admin_sees_all(start, receiver, tmp_path, tenant_env) -> None:
    running = await start(tenant_config(tmp_path, receiver.url))
    status, mine = await _as(running, CRM_KEY, "POST", "/v1/jobs", json=speaker_job(1, campaign="crm"))
    assert status == 202
    await _decided(running, CRM_KEY, mine["job_id"])  # the default tenant's keys cannot see it...
    assert (await _as(running, API_KEY, "GET", f"/v1/jobs/{mine['job_id']}"))[0] == 404
    # ...the tenant's other key can, and so can an admin.
    assert (await _as(running, "crm-key-2", "GET", f"/v1/jobs/{mine['job_id']}"))[0] == 200
    assert (await _as(running, ADMIN_KEY, "GET", f"/v1/jobs/{mine['job_id']}"))[0] == 200


async def test_idempotency_keys_are_the_tenants_own(start, receiver, tmp_path, tenant_env) -> None:
    running = await start(tenant_config(tmp_path, receiver.url))
    job = speaker_job(1)
    headers = {"Idempotency-Key": "shared"}
    _, first = await _as(running, API_KEY, "POST", "/v1/jobs", json=job, headers=headers)
    status, other = await _as(running, CRM_KEY, "POST", "/v1/jobs", json=dict(job, campaign="x"), headers=headers)
    assert status == 202 and other["job_id"] != first["job_id"]  # another tenant: another job
    # The same tenant's other key replays the tenant's job.
    status, again = await _as(running, "crm-key-2", "POST", "/v1/jobs", json=dict(job, campaign="x"), headers=headers)
    assert status == 202 and again["job_id"] == other["job_id"]


async def test_opt_outs_and_caps_are_per_tenant(start, receiver, tmp_path, tenant_env) -> None:
    cap = {"name": "one-a-day", "limit": 1, "window": "24h", "include_transactional": True}
    running = await start(tenant_config(tmp_path, receiver.url, caps=[cap]))
    for key in (API_KEY, CRM_KEY):  # the same user in two tenants: each its own cap
        _, body = await _as(running, key, "POST", "/v1/jobs", json=speaker_job(1, category="transactional"))
        assert (await _decided(running, key, body["job_id"]))["decisions"][0]["outcome"] == "sent"
    _, body = await _as(running, CRM_KEY, "POST", "/v1/jobs", json=speaker_job(1, category="transactional"))
    assert (await _decided(running, CRM_KEY, body["job_id"]))["decisions"][0]["outcome"] == "capped"
    gw = running.gateway
    await gw.store.record_opt_out("crm\x1fana@example.com", "c", gw.clock.now())
    gw.policy.opt_outs.add("crm\x1fana@example.com")
    assert (await _as(running, API_KEY, "DELETE", "/v1/opt-outs/ana@example.com"))[0] == 404  # not the default's
    assert (await _as(running, CRM_KEY, "DELETE", "/v1/opt-outs/ana@example.com"))[0] == 204


def test_a_key_belongs_to_one_tenant(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_CRM_KEYS", API_KEY)
    monkeypatch.setenv("GATEWAY_TEST_API_KEYS", API_KEY)
    with pytest.raises(ConfigError) as err:
        key_table(tenant_config(tmp_path))
    assert err.value.problems == ["tenants.crm.api_keys: a key of tenant 'default' too; each key has one tenant"]


def test_one_click_tokens_carry_the_tenant() -> None:
    from plugins.mail import read_token, sign_token

    key = b"k" * 32
    assert read_token(key, sign_token(key, "a@x.example", "c")) == ("a@x.example", "c")
    assert read_token(key, sign_token(key, "a@x.example", "c", "crm")) == ("a@x.example", "c", "crm")
