"""A whole config checked in one run: every problem, with its key path, in words.

`config.load_config` decodes the sections; this adds what needs the plugins and the other
sections: each channel's own table, the policy (caps, time zones), the store URL, the API
keys file, and every name that refers to something (channels and channel groups in quiet
hours, caps and per-channel concurrency; plugins to disable). A typo there would switch a
rule off silently, so it is an error with a "did you mean".
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec

from gateway.channel import Channel
from gateway.config import (
    ConfigError,
    GatewayConfig,
    default_path,
    key_table,
    read_config,
    struct_problems,
    unknown_hint,
    usable_part,
)
from gateway.loader import ENTRY_POINT_GROUP, channel_classes, configure_channels, plugin_manager
from gateway.policy.caps import GROUPS

ChannelSpecs = dict[str, tuple[type[Channel], Any]]


def check_config(path: str | Path | None) -> tuple[GatewayConfig, ChannelSpecs]:
    """The config and its configured channels, or ConfigError listing every problem."""
    where = Path(path) if path is not None else default_path()
    if where is None:
        data: dict[str, Any] = {}
    else:
        data = read_config(where)
    problems = struct_problems(data, GatewayConfig, "")
    config = usable_part(data, problems)
    classes = channel_classes(plugin_manager(config))
    specs: ChannelSpecs = {}
    for step in (_policy, _store, _keys, _callbacks):
        problems += _problems_of(step, config)
    try:
        specs = configure_channels(config, classes)
    except ConfigError as exc:
        problems += exc.problems
    problems += references(config, classes, data)
    if problems:
        raise ConfigError(_unique(problems), str(where or "built-in defaults"))
    return config, specs


def references(
    config: GatewayConfig, classes: dict[str, type[Channel]], data: dict[str, Any] | None = None
) -> list[str]:
    """Names that must refer to an installed channel (or a group: `push`, `any`) or plugin."""
    names = set(classes) | set(GROUPS) | {"any"}
    # From the file as written when there is one: a section with another mistake is left
    # at its defaults in `config`, and its names must be checked all the same.
    raw = data if data is not None else msgspec.to_builtins(config)
    problems = []
    quiet = _table(raw, "quiet_hours").get("channels", [])
    for i, name in _strings(quiet):
        problems += _channel_ref(f"quiet_hours.channels[{i}]", name, names)
    caps = raw.get("caps", [])
    for i, rule in enumerate(caps if isinstance(caps, list) else []):
        for j, name in _strings(rule.get("channels", []) if isinstance(rule, dict) else []):
            problems += _channel_ref(f"caps[{i}].channels[{j}]", name, names)
    for name in _table(_table(raw, "delivery"), "concurrency_per_channel"):
        problems += _channel_ref(f"delivery.concurrency_per_channel.{name}", name, set(classes))
    tenants = {"default", *config.tenants}
    for name in config.callbacks:
        if name not in tenants:
            problems.append(f"callbacks.{name}: no tenant {name!r}{unknown_hint(name, tenants)}")
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for i, name in enumerate(config.plugins.disable):
        if name not in plugins:
            problems.append(f"plugins.disable[{i}]: no plugin {name!r} is installed{unknown_hint(name, plugins)}")
    return problems


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    found = data.get(key, {})
    return found if isinstance(found, dict) else {}


def _strings(items: Any) -> list[tuple[int, str]]:
    return [(i, x) for i, x in enumerate(items) if isinstance(x, str)] if isinstance(items, list) else []


def _channel_ref(path: str, name: str, names: set[str]) -> list[str]:
    if name in names:
        return []
    return [f"{path}: no channel or channel group {name!r}{unknown_hint(name, names)}"]


def _policy(config: GatewayConfig) -> None:
    from gateway.policy.engine import load_policy

    load_policy(config)


def _store(config: GatewayConfig) -> None:
    from gateway.store import make_store

    make_store(config.store)


def _keys(config: GatewayConfig) -> None:
    key_table(config)


def _callbacks(config: GatewayConfig) -> None:
    from urllib.parse import urlsplit

    from gateway.transport.webhooks import webhook_key

    problems = []
    for name, callback in config.callbacks.items():
        if urlsplit(callback.url).scheme not in ("http", "https"):
            problems.append(f"callbacks.{name}.url: expected an http(s) URL, got {callback.url!r}")
        try:
            webhook_key(callback.secret.resolve(f"callbacks.{name}.secret").reveal())
        except ValueError as exc:
            problems.append(f"callbacks.{name}.secret: {exc}")
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)


def _problems_of(step: Any, config: GatewayConfig) -> list[str]:
    try:
        step(config)
    except ConfigError as exc:
        return exc.problems
    return []


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
