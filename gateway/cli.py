"""The `gateway` command: serve, check-config, plugins, demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
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
    """The config, checked whole (every problem in one report), for commands that run it."""
    from gateway.checkconfig import check_config

    return check_config(args.config)[0]


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging
    from gateway.server import serve

    config = _config(args)
    configure_logging(config.logging, args.verbose)
    run(serve(config, args.host, args.port))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.checkconfig import check_config

    path = args.file or args.config
    _, configured = check_config(path)
    print(
        f"{path or 'built-in defaults'}: OK ({len(configured)} channel(s) configured: "
        f"{', '.join(sorted(configured)) or 'none'})"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from gateway.loader import channel_classes, configure_channels, describe, plugin_manager

    config = load_config(args.config)
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
    from gateway.preview import OverRenderLimit, mark_not_configured, preview, stand_in, table

    try:
        body = Path(job_path).read_bytes()
    except OSError as exc:
        print(f"{job_path}: {exc.strerror}", file=sys.stderr)
        return 2
    classes = channel_classes(plugin_manager(config))
    specs = configure_channels(config, classes)
    policy = load_policy(config)
    channels = {name: await cls.create(cfg) for name, (cls, cfg) in specs.items()}
    # Installed but not configured here: policy is still worth seeing (a stand-in each).
    stand_ins = {name: stand_in(cls) for name, cls in classes.items() if name not in channels}
    groups = frozenset(cls.subscription_group for cls in classes.values())
    try:
        try:
            accepted = accept_job(body, config.limits, {**channels, **stand_ins}, groups)
        except JobError as exc:
            print(f"{job_path}: {exc.status}: {exc.path}: {exc.message}", file=sys.stderr)
            return 1
        store = await _open_store_for_reading(config)
        try:
            check = store.check_caps if store is not None else None
            try:
                everything = {**channels, **stand_ins}
                at = now if now is not None else time.time()
                result = await preview(accepted, everything, policy, at, check, batch_size=config.pipeline.batch_size)
                mark_not_configured(result, set(stand_ins) & set(accepted.job.channels))
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


def cmd_fakes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.testing import local

    directory = Path(args.dir)
    if args.stop:
        stopped = local.stop_background(directory)
        print("local providers stopped" if stopped else f"no local providers running from {directory}")
        return 0
    if args.foreground:
        return run(local.run(directory, args.url)) or 0
    try:
        pid = local.start_in_background(directory, args.url)
    except RuntimeError as exc:
        print(f"gateway fakes: {exc}", file=sys.stderr)
        return 1
    config = directory / "gateway.toml"
    print(
        f"local providers running (pid {pid}, log {directory / 'fakes.log'}); config written to {config}\n"
        f"  serve with: GATEWAY_CONFIG={config} .venv/bin/gateway serve\n"
        f"  stop with:  .venv/bin/gateway fakes --stop"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.config import LoggingConfig
    from gateway.demo.run import demo
    from gateway.logs import configure_logging

    # The demo prints its own report; the gateway's job lines would interleave with it
    # (`gateway -v demo` shows them, and everything else).
    configure_logging(LoggingConfig(level="warning"), args.verbose)

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
    s = sub.add_parser("fakes", help="start local providers (APNs, FCM, SMTP, webhook) and write a config for them")
    s.add_argument("--dir", default="data/fakes", help="where the config, keys and log go (default data/fakes)")
    s.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's URL, for unsubscribe links")
    s.add_argument("--foreground", action="store_true", help="stay in the terminal, printing what arrives")
    s.add_argument("--stop", action="store_true", help="stop the providers started in the background")
    s.set_defaults(fn=cmd_fakes)
    s = sub.add_parser("demo", help="run the gateway against local receivers with the example jobs")
    s.add_argument(
        "--recipients", type=int, default=5000, help="size of the synthetic throughput job (default 5000; 0 to skip)"
    )
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from gateway.logs import configure_logging
    from gateway.server import StartError

    args = parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `gateway preview job.json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except KeyboardInterrupt:
        return 130
