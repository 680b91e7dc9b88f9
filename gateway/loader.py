"""Loading plugins (pluggy, the `gateway` entry-point group) and configuring their channels."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import msgspec
import pluggy

from gateway import hookspecs
from gateway.channel import Channel
from gateway.config import ConfigError, GatewayConfig, did_you_mean, struct_problems, without_problems

ENTRY_POINT_GROUP = "gateway"
# Set to a comma-separated list of entry-point names to load only those (datasette-style).
ONLY_ENV = "GATEWAY_PLUGINS"
TRACE_ENV = "GATEWAY_TRACE_HOOKS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    channels: tuple[str, ...]


def plugin_manager(config: GatewayConfig, extra: tuple[Any, ...] = ()) -> pluggy.PluginManager:
    """A plugin manager with every entry-point plugin loaded, except disabled ones.

    `extra` registers plugin objects directly (tests, embedding applications).
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in config.plugins.disable:
        pm.set_blocked(name)
    only = os.environ.get(ONLY_ENV)
    if only is not None:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in wanted:
                pm.set_blocked(ep.name)
    for plugin in extra:
        pm.register(plugin)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda msg: log.info("hook %s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def observe(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> None:
    """Call an observer hook; a plugin that raises is logged, and delivery goes on: what an
    observer does with a batch must not change what happens to it."""
    caller = getattr(pm.hook, hook)
    if not caller.get_hookimpls():  # nobody observes: skip pluggy's call machinery
        return
    try:
        caller(**kwargs)
    except Exception:
        log.exception("a %s hook implementation raised; delivery goes on", hook)


def channel_classes(pm: pluggy.PluginManager) -> dict[str, type[Channel]]:
    """Channel name -> class. pluggy calls the last registered plugin first, and
    `trylast` built-ins come after everyone, so the first name seen wins."""
    found: dict[str, type[Channel]] = {}
    for classes in pm.hook.register_channels():
        for cls in classes:
            found.setdefault(cls.name, cls)
    return found


def configure_channels(
    config: GatewayConfig, classes: dict[str, type[Channel]]
) -> dict[str, tuple[type[Channel], Any]]:
    """Decode each `[channels.<name>]` table with its channel's Config Struct.

    A channel that requires config and has none is left out (jobs naming it are still
    accepted, with `channel_unavailable` decisions). A table for a channel no plugin
    provides is an error: it is almost always a typo.
    """
    problems: list[str] = []
    configured: dict[str, tuple[type[Channel], Any]] = {}
    for name in config.channels:
        if name not in classes:
            known = ", ".join(sorted(classes)) or "none"
            hint = did_you_mean(name, classes)
            problems.append(f"channels.{name}: no plugin provides this channel{hint} (loaded: {known})")
    for name, cls in classes.items():
        table = config.channels.get(name)
        if table is None and cls.requires_config:
            continue
        path = f"channels.{name}"
        found = struct_problems(table or {}, cls.Config, path)
        try:  # without its bad keys, what else is wrong (secrets, URLs): all in one round
            channel_config = msgspec.convert(without_problems(table or {}, found, path), cls.Config)
        except msgspec.ValidationError:
            problems += found
            continue
        found += cls.check_config(channel_config, path)
        problems += found
        if not found:
            configured[name] = (cls, channel_config)
    if problems:
        raise ConfigError(problems)
    return configured


def describe(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """What was loaded and from where, for `gateway plugins`."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for plugin in pm.get_plugins():
        if plugin is None:
            continue
        name = pm.get_name(plugin) or repr(plugin)
        channels: tuple[str, ...] = ()
        impl = getattr(plugin, "register_channels", None)
        if impl is not None:
            channels = tuple(cls.name for cls in impl())
        dist = dists.get(id(plugin))
        infos.append(
            PluginInfo(
                name=name,
                module=getattr(plugin, "__name__", type(plugin).__name__),
                distribution=dist.project_name if dist else None,
                version=dist.version if dist else None,
                channels=channels,
            )
        )
    return sorted(infos, key=lambda i: i.name)
