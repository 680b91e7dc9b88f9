"""A whole config checked in one run, in words, with "did you mean"; names that refer to
channels checked against what is installed; unknown subscription groups in jobs refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.checkconfig import check_config
from gateway.config import ConfigError, GatewayConfig

from .conftest import make_config, speaker_job
from .test_config import check_config_cli

TEN_MISTAKES = """
[server]
port = "8080"
shutdown_timout = "30s"
[store]
synchronous = "ful"
[intake]
max_queue_age = "2 seconds"
[quiet_hours]
start = "9pm"
channels = ["push", "spekaer"]
action = "deffer"
[[caps]]
name = "daily"
limit = 3
window = "24h"
channels = ["pushh"]
[delivery]
concurrency_per_channel = { emial = 10 }
[channels.speaker.targets.hub]
url = "http://127.0.0.1:9999/hook"
secret = { env = "HUB_SECRET_UNSET" }
"""


def test_ten_mistakes_are_reported_in_one_run_in_words(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TEN_MISTAKES)
    proc = check_config_cli(path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{path}: 10 problem(s)"
    assert set(lines[1:]) == {
        "  server.shutdown_timout: unknown key (did you mean 'shutdown_timeout'?)",
        "  server.port: expected an integer, got '8080'",
        "  intake.max_queue_age: expected a duration such as 500ms, 30s, 15m, 24h or 7d, got '2 seconds'",
        "  store.synchronous: expected one of 'full', 'normal', got 'ful' (did you mean 'full'?)",
        "  quiet_hours.start: expected a time of day as HH:MM, 00:00 to 23:59, got '9pm'",
        "  quiet_hours.action: expected one of 'defer', 'drop', 'ignore', got 'deffer' (did you mean 'defer'?)",
        "  channels.speaker.targets.hub.secret.env: environment variable HUB_SECRET_UNSET is not set",
        "  quiet_hours.channels[1]: no channel or channel group 'spekaer' (did you mean 'speaker'?)",
        "  caps[0].channels[0]: no channel or channel group 'pushh' (did you mean 'push'?)",
        "  delivery.concurrency_per_channel.emial: no channel or channel group 'emial' (did you mean 'email'?)",
    }


def _scalar_fields(struct: type[msgspec.Struct], path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, msgspec type) of every scalar and list setting of the config."""
    found = []
    for field in msgspec.inspect.type_info(struct).fields:  # type: ignore[attr-defined]
        key = f"{path}.{field.encode_name}" if path else field.encode_name
        if isinstance(field.type, msgspec.inspect.StructType):
            found += _scalar_fields(field.type.cls, key)
        elif not isinstance(field.type, (msgspec.inspect.DictType, msgspec.inspect.AnyType)):
            found.append((key, field.type))
    return found


SETTINGS = [(k, t) for k, t in _scalar_fields(GatewayConfig) if k != "caps"]
WRONG = st.one_of(st.just({"nested": 1}), st.just(-7), st.just("x?y"), st.just([[1]]), st.just(True))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SETTINGS), WRONG), min_size=1, max_size=5, unique_by=lambda x: x[0][0]))
def test_every_wrong_setting_is_named_and_explained_in_one_run(tmp_path_factory, changes) -> None:
    """Wrong values anywhere in the config: each bad key is reported, all in one run, in
    words (no regex, no msgspec type names), and never a crash."""
    data: dict[str, Any] = {}
    expected = set()
    for (key, _ftype), value in changes:
        section, name = key.split(".", 1)
        try:
            msgspec.convert(value, _python_type(key))
        except msgspec.ValidationError:
            expected.add(key)
        data.setdefault(section, {})[name] = value
    path = tmp_path_factory.mktemp("cfg") / "gateway.toml"
    path.write_text(_toml(data))
    try:
        check_config(path)
        found: list[str] = []
    except ConfigError as exc:
        found = exc.problems
    named = {p.split(":")[0].split("[")[0] for p in found}
    assert expected <= named, (expected, found)
    for problem in found:
        assert "regex" not in problem and "`" not in problem.split(":", 1)[1], problem


def _python_type(key: str) -> Any:
    import typing

    section, name = key.split(".", 1)
    struct = typing.get_type_hints(GatewayConfig)[section]
    return typing.get_type_hints(struct, include_extras=True)[name]


def _toml(data: dict[str, dict[str, Any]]) -> str:
    import json

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value, json)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any, json: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v, json)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, json) for v in value) + "]"
    return json.dumps(value)


def test_a_gateway_refuses_a_policy_naming_no_channel(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.quiet_hours.channels = ["push", "spekaer"]
    with pytest.raises(ConfigError) as err:
        Gateway(config)
    assert err.value.problems == [
        "quiet_hours.channels[1]: no channel or channel group 'spekaer' (did you mean 'speaker'?)"
    ]


async def test_an_unknown_subscription_group_in_a_job_is_a_400_with_its_path(api) -> None:
    job = speaker_job(2)
    job["recipients"][1]["subscriptions"] = {"mail": "subscribed"}
    status, body, _ = await api.post(job)
    assert status == 400
    assert body["path"] == "$.recipients[1].subscriptions.mail"
    assert "did you mean 'email'?" in body["message"]
    async with api.http.post("/v1/preview", json=job) as r:
        assert r.status == 400
        assert (await r.json())["path"] == "$.recipients[1].subscriptions.mail"
