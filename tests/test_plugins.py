from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from gateway import hookspecs
from gateway.channel import Channel
from gateway.config import GatewayConfig, PluginsConfig
from gateway.hookspecs import hookimpl
from gateway.loader import channel_classes, describe, plugin_manager
from gateway.model.delivery import Delivery, Result, Sent
from tests.conftest import make_config, speaker_job

REPO = Path(__file__).resolve().parent.parent


def hook_names() -> set[str]:
    return {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "gateway_spec")}


def test_every_hook_is_documented_in_docs_plugins() -> None:
    doc = (REPO / "docs" / "plugins.md").read_text()
    documented = set(re.findall(r"^### (\w+)$", doc, re.M))
    assert documented == hook_names()
    for name in hook_names():
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and fn.__doc__.strip(), name
        params = list(inspect.signature(fn).parameters)
        assert f"`{name}({', '.join(params)})" in doc, name


def test_builtin_speaker_comes_from_the_entry_point() -> None:
    pm = plugin_manager(GatewayConfig())
    assert channel_classes(pm)["speaker"].__module__ == "plugins.speaker"
    info = {i.name: i for i in describe(pm)}["speaker"]
    assert info.distribution == "notification-gateway" and info.channels == ("speaker",)


def test_disabled_plugin_is_not_loaded() -> None:
    pm = plugin_manager(GatewayConfig(plugins=PluginsConfig(disable=["speaker"])))
    assert "speaker" not in channel_classes(pm)


def test_gateway_plugins_cli_lists_origin(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "plugins"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("speaker"))
    assert "plugins.speaker" in line and "notification-gateway" in line


class RecordingSpeaker(Channel):
    """A third-party channel that replaces the built-in `speaker`."""

    name = "speaker"
    content_kind = "speaker"
    subscription_group = "speaker"
    requires_config = False
    sent: ClassVar[list[str]] = []

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        RecordingSpeaker.sent += [d.content.speech for d in deliveries]
        return [Sent() for _ in deliveries]


class ThirdParty:
    batches: ClassVar[list[int]] = []
    recorded: ClassVar[list[int]] = []

    @hookimpl
    def register_channels(self):
        return [RecordingSpeaker]

    @hookimpl
    def delivery_results(self, job_id, channel, deliveries, results):
        ThirdParty.batches.append(len(deliveries))

    @hookimpl
    def decisions_recorded(self, job_id, decisions):
        ThirdParty.recorded.append(len(decisions))


async def test_third_party_channel_overrides_builtin_and_hooks_run_per_batch(start, tmp_path) -> None:
    RecordingSpeaker.sent = []
    ThirdParty.batches, ThirdParty.recorded = [], []
    config = make_config(tmp_path, pipeline={"batch_size": 10, "workers": 1})
    running = await start(config, extra_plugins=(ThirdParty(),))
    assert type(running.gateway.channels["speaker"]) is RecordingSpeaker
    _, body, _ = await running.post(speaker_job(25))
    await running.wait(body["job_id"])
    assert len(RecordingSpeaker.sent) == 25
    # 25 recipients in batches of 10: three calls of each observer, not 25
    assert ThirdParty.batches == [10, 10, 5]
    assert ThirdParty.recorded == [10, 10, 5]
