"""The `gateway` command: serve, check-config, plugins, demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from gateway.config import ConfigError, GatewayConfig, load_config


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the hot path allocates many short-lived objects per message,
    and the default young-generation threshold (700) makes collections walk the in-flight
    jobs thousands of times a second. Start-up objects are frozen out of the walk."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed (it is a dependency on POSIX)."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    run(serve(_config(args), args.host, args.port))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.loader import channel_classes, configure_channels, plugin_manager
    from gateway.store import make_store

    path = args.file or args.config
    config = load_config(path)
    try:
        from gateway.policy.engine import load_policy

        make_store(config.store)
        load_policy(config)
        configured = configure_channels(config, channel_classes(plugin_manager(config)))
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path or "built-in defaults")) from None
    print(
        f"{path or 'built-in defaults'}: OK ({len(configured)} channel(s) configured: "
        f"{', '.join(sorted(configured)) or 'none'})"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from gateway.loader import channel_classes, configure_channels, describe, plugin_manager

    config = _config(args)
    pm = plugin_manager(config)
    classes = channel_classes(pm)
    try:
        configured = set(configure_channels(config, classes))
    except ConfigError:
        configured = set()
    rows = [("plugin", "channels", "module", "from")]
    for info in describe(pm):
        origin = f"{info.distribution} {info.version}" if info.distribution else "registered in-process"
        channels = ", ".join(f"{c}{'' if c in configured else ' (not configured)'}" for c in info.channels)
        rows.append((info.name, channels or "-", info.module, origin))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from gateway.preview import parse_instant

    now = None
    if args.now:
        try:
            now = parse_instant(args.now)
        except ValueError as exc:
            print(f"--now: {exc}", file=sys.stderr)
            return 2
    return run(_preview(_config(args), args.job, now, args.json))


async def _open_store_for_reading(config: GatewayConfig) -> Any:
    """The configured store, for preview's cap checks and opt-outs; None (with a note on
    stderr) when it cannot be opened: the preview then shows caps unevaluated."""
    from gateway.store import StoreUnavailable, make_store

    store = make_store(config.store)
    try:
        await store.open()
    except StoreUnavailable as exc:
        print(f"note: frequency caps not evaluated: {exc}", file=sys.stderr)
        return None
    return store


async def _preview(config: GatewayConfig, job_path: str, now: float | None, as_json: bool) -> int:
    import time
    from pathlib import Path

    import msgspec

    from gateway.intake.validate import JobError, accept_job
    from gateway.loader import channel_classes, configure_channels, plugin_manager
    from gateway.policy.engine import load_policy
    from gateway.preview import OverRenderLimit, preview, table

    try:
        body = Path(job_path).read_bytes()
    except OSError as exc:
        print(f"{job_path}: {exc.strerror}", file=sys.stderr)
        return 2
    specs = configure_channels(config, channel_classes(plugin_manager(config)))
    policy = load_policy(config)
    channels = {name: await cls.create(cfg) for name, (cls, cfg) in specs.items()}
    try:
        try:
            accepted = accept_job(body, config.limits, channels)
        except JobError as exc:
            print(f"{job_path}: {exc.status}: {exc.path}: {exc.message}", file=sys.stderr)
            return 1
        store = await _open_store_for_reading(config)
        try:
            check = store.check_caps if store is not None else None
            try:
                result = await preview(accepted, channels, policy, now if now is not None else time.time(), check)
            except OverRenderLimit as exc:
                print(f"{job_path}: 400: {exc.path}: {exc.message}", file=sys.stderr)
                return 1
        finally:
            if store is not None:
                await store.close()
    finally:
        for channel in channels.values():
            await channel.aclose()
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(result)).decode())
    else:
        print(table(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import demo

    return run(demo(args.config or "config/demo.toml", args.recipients))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Notification delivery gateway")
    p.add_argument(
        "--config",
        help="TOML config file (default: $GATEWAY_CONFIG, else ./config/gateway.toml "
        "if present, else built-in defaults)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP API and the delivery workers")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("check-config", help="validate a config file; report every error with its key path")
    s.add_argument("file", nargs="?")
    s.set_defaults(fn=cmd_check_config)
    s = sub.add_parser("plugins", help="list loaded plugins, their channels and where they came from")
    s.set_defaults(fn=cmd_plugins)
    s = sub.add_parser("preview", help="what a job would do to each recipient; nothing is sent")
    s.add_argument("job", help="send job JSON file")
    s.add_argument("--json", action="store_true", help="print the complete preview as JSON")
    s.add_argument("--now", help="evaluate at this instant (RFC 3339, e.g. 2026-11-28T12:00:00Z)")
    s.set_defaults(fn=cmd_preview)
    s = sub.add_parser("demo", help="run the gateway against local receivers with the example jobs")
    s.add_argument(
        "--recipients", type=int, default=5000, help="size of the synthetic throughput job (default 5000; 0 to skip)"
    )
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
