from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.server import RunningServer, start_server
from gateway.testing import WebhookReceiver, new_secret

REPO = Path(__file__).resolve().parent.parent
SHARED_EXAMPLES = REPO.parent / "shared" / "examples"
API_KEY = "test-key-0123456789"


def make_config(tmp_path: Path, receiver_url: str | None = None, **sections: Any) -> GatewayConfig:
    """A config on a fresh SQLite file; the speaker target points at `receiver_url`."""
    data: dict[str, Any] = {
        "server": {"port": 0, "api_keys_env": "GATEWAY_TEST_API_KEYS", "shutdown_timeout": "5s"},
        "store": {"url": f"sqlite:{tmp_path}/gateway.db", "synchronous": "normal"},
        "delivery": {"backoff_base": "10ms", "backoff_max": "50ms", "retry_window": "250ms"},
        "pipeline": {"workers": 2, "batch_size": 50},
        # Off unless a test is about it: the wall clock must not decide other tests.
        "quiet_hours": {"enabled": False},
    }
    if receiver_url is not None:
        data["channels"] = {
            "speaker": {
                "targets": {
                    "home-hub": {
                        "url": f"{receiver_url}/hooks/home-hub",
                        "secret": {"env": "GATEWAY_TEST_SPEAKER_SECRET"},
                    },
                }
            }
        }
    for name, values in sections.items():
        if isinstance(values, list):
            data[name] = values
        else:
            data.setdefault(name, {}).update(values)
    return msgspec.convert(data, GatewayConfig)


# Where the event loop matters (connections, channels, the pipeline), tests run on both the
# default loop and uvloop, which `gateway serve` uses.
BOTH_LOOPS = (
    "tests/intake/",
    "tests/dispatch/",
    "tests/plugins/",
    "tests/test_pipeline.py",
    "tests/test_isolation.py",
    "tests/test_time_and_faults.py",
    "tests/test_all_channels.py",
    "tests/test_independent_fakes.py",
    "tests/policy/test_policy_pipeline.py",
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    factories: dict[str, Callable[[], Any]] = {"asyncio": asyncio.new_event_loop}
    path = item.nodeid.split("::")[0]
    if uvloop is not None and path.startswith(BOTH_LOOPS):
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
def speaker_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = new_secret()
    monkeypatch.setenv("GATEWAY_TEST_SPEAKER_SECRET", secret)
    return secret


@pytest.fixture
def api_key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GATEWAY_TEST_API_KEYS", f"other-key,{API_KEY}")
    return API_KEY


@pytest.fixture
async def receiver(speaker_secret: str) -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(speaker_secret) as r:
        yield r


@dataclass
class Running:
    server: RunningServer
    http: aiohttp.ClientSession
    gateway: Gateway

    async def post(
        self, job: dict[str, Any] | bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        body = job if isinstance(job, bytes) else json.dumps(job).encode()
        async with self.http.post("/v1/jobs", data=body, headers=headers) as r:
            return r.status, await r.json(), r.headers

    async def status(self, job_id: str, **params: str) -> dict[str, Any]:
        async with self.http.get(f"/v1/jobs/{job_id}", params=params) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait(self, job_id: str, timeout: float = 20, states: tuple[str, ...] = ("completed",)) -> dict[str, Any]:
        import asyncio

        async with asyncio.timeout(timeout):
            while (status := await self.status(job_id, limit="1000"))["state"] not in states:
                await asyncio.sleep(0.01)
        return status


@pytest.fixture
async def start(tmp_path: Path, api_key_env: str) -> AsyncIterator[Callable[..., Any]]:
    """start(config=None, gateway_kwargs...) -> Running; everything is stopped after the test."""
    started: list[Running] = []

    async def _start(config: GatewayConfig | None = None, **gateway_kwargs: Any) -> Running:
        config = config or make_config(tmp_path)
        # A fake clock's sleep returns at once: a test with one drives the scheduler itself.
        gateway_kwargs.setdefault("run_background", "clock" not in gateway_kwargs)
        gateway = Gateway(config, **gateway_kwargs)
        server = await start_server(config, gateway)
        http = aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {api_key_env}"})
        running = Running(server, http, gateway)
        started.append(running)
        return running

    yield _start
    for running in started:
        await running.http.close()
        await running.server.stop()


def epoch(instant: str) -> float:
    """An RFC 3339 time the API shows, as epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()


def speaker_job(n: int = 3, **overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "campaign": "test-campaign",
        "channels": ["speaker"],
        "variants": [
            {
                "name": "default",
                "content": {"speaker": {"speech": "Hello {{ attributes.first_name | default: 'there' }}"}},
            }
        ],
        "recipients": [
            {
                "user_id": f"u{i}",
                "attributes": {"first_name": f"N{i}"},
                "subscriptions": {"speaker": "opted_in"},
                "devices": [{"channel": "speaker", "target": "home-hub", "device_id": f"d{i}"}],
            }
            for i in range(n)
        ],
    }
    job.update(overrides)
    return job


@pytest.fixture(params=["sqlite", "redis"])
def both_stores(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config sections for a test to run on each store: the embedded one, then Redis (a
    fresh key prefix on the session's redis-server)."""
    if request.param == "sqlite":
        return {}
    import uuid

    return {"store": {"url": request.getfixturevalue("redis_url"), "key_prefix": f"t{uuid.uuid4().hex[:8]}:"}}


def require_shared() -> bool:
    return bool(os.environ.get("GATEWAY_REQUIRE_SHARED"))


@pytest.fixture
async def api(start: Callable[..., Any]) -> Running:
    """A running gateway with no channels configured."""
    return await start()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real redis-server on a free port for this test session."""
    from gateway.testing.redis_server import RedisServer

    if RedisServer.binary() is None:
        if os.environ.get("GATEWAY_REQUIRE_REDIS"):
            pytest.fail("GATEWAY_REQUIRE_REDIS is set but redis-server is not on PATH")
        pytest.skip("redis-server is not installed: the Redis backend is not tested here")
    with RedisServer(workdir=tmp_path_factory.mktemp("redis")) as url:
        yield url
