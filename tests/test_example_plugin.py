"""The example third-party channel in examples/gateway-sms, pip-installed, found through
its entry point, delivering end to end to a local SMS API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.loader import channel_classes, describe, plugin_manager
from tests.conftest import make_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(REPO / "examples" / "gateway-sms"),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m.startswith("gateway_sms")]:
            del sys.modules[name]


def test_found_through_its_entry_point(installed: Path) -> None:
    pm = plugin_manager(GatewayConfig())
    assert channel_classes(pm)["sms"].__module__ == "gateway_sms"
    info = {i.name: i for i in describe(pm)}["sms"]
    assert (info.distribution, info.version, info.channels) == ("gateway-sms", "0.1.0", ("sms",))


async def test_delivers_end_to_end(installed: Path, start, tmp_path, monkeypatch) -> None:
    sent: list[dict[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer sms-key"
        body = await request.json()
        if body["to"] == "+000":
            return web.json_response({"error": "invalid_number"}, status=400)
        sent.append(body)
        return web.json_response({"id": len(sent)}, status=201)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("SMS_API_KEY", "sms-key")
    try:
        config = make_config(tmp_path)
        config.channels["sms"] = {
            "api_url": f"http://127.0.0.1:{port}/v1",
            "api_key": {"env": "SMS_API_KEY"},
            "sender": "SHOP",
        }
        running = await start(config)
        job = {
            "campaign": "otp",
            "category": "transactional",
            "channels": ["sms"],
            "variants": [{"name": "d", "content": {"push": {"title": "Shop", "body": "Code {{ properties.code }}"}}}],
            "recipients": [
                {
                    "user_id": "a",
                    "properties": {"code": "4711"},
                    "devices": [{"channel": "sms", "token": "+33612345678"}],
                },
                {"user_id": "b", "properties": {"code": "1234"}, "devices": [{"channel": "sms", "token": "+000"}]},
            ],
        }
        _, body, _ = await running.post(job)
        done = await running.wait(body["job_id"])
    finally:
        await runner.cleanup()
    assert [(d["outcome"], d.get("reason")) for d in done["decisions"]] == [
        ("sent", None),
        ("invalid_token", "invalid_number"),
    ]
    assert sent == [
        {"from": "SHOP", "to": "+33612345678", "text": "Shop: Code 4711", "reference": f"{body['job_id']}.0.sms.0"}
    ]
