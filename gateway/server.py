"""Running the gateway as a server: bind, serve, and stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass

from aiohttp import web

from gateway.app import Gateway
from gateway.config import ApiKey, ConfigError, GatewayConfig, key_table, redact_url, seconds
from gateway.intake.api import INTAKE_KEY, make_app
from gateway.intake.fastpath import FastIntake, PlainProtocol
from gateway.intake.guard import GuardedProtocol
from gateway.intake.guard import log as http_log
from gateway.logs import json_logs

log = logging.getLogger(__name__)


class StartError(Exception):
    """The server cannot start (a busy port): the CLI prints the message, no traceback."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_for(config: GatewayConfig, host: str) -> list[ApiKey]:
    keys = key_table(config)
    if not keys and not is_loopback(host):
        raise ConfigError(
            [
                f"server.host: refusing to listen on non-loopback address {host!r} with no API keys; "
                f"set {config.server.api_keys_env} (comma-separated) or server.api_keys_file"
            ]
        )
    if not keys:
        log.warning("no API keys configured: the API is open to local callers only (%s)", host)
    return keys


@dataclass
class RunningServer:
    gateway: Gateway
    runner: web.AppRunner
    server: asyncio.Server
    url: str
    fast: FastIntake | None = None
    stopped: bool = False

    async def stop(self) -> None:
        """Stop accepting connections, finish or journal in-flight work, close."""
        if self.stopped:
            return
        self.stopped = True
        self.gateway.accepting = False
        self.server.close()
        if self.fast is not None:
            self.fast.stop()
        await self.server.wait_closed()
        await self.gateway.stop()
        await self.runner.cleanup()


async def start_server(
    config: GatewayConfig, gateway: Gateway | None = None, host: str | None = None, port: int | None = None
) -> RunningServer:
    host = host or config.server.host
    port = config.server.port if port is None else port
    keys = keys_for(config, host)
    gateway = gateway or Gateway(config)
    await gateway.start()
    runner = web.AppRunner(make_app(gateway, keys), access_log=None, handle_signals=False, logger=http_log)
    await runner.setup()
    assert runner.server is not None
    handlers, header_timeout = runner.server, seconds(config.server.header_timeout)

    def aiohttp_protocol() -> asyncio.Protocol:
        return GuardedProtocol(handlers(), header_timeout)

    # Plain job posts are read by intake/fastpath.py (with API keys only: without them the
    # loopback checks of the aiohttp middleware apply to every request).
    fast = FastIntake(gateway, runner.app[INTAKE_KEY], keys) if config.server.fast_intake and keys else None
    protocol = aiohttp_protocol if fast is None else lambda: PlainProtocol(fast, aiohttp_protocol)
    # Our own listening socket rather than aiohttp's TCPSite: each connection goes through
    # the header clock (intake/guard.py), which aiohttp's server does not have.
    try:
        server = await asyncio.get_running_loop().create_server(protocol, host, port, reuse_address=True)
    except OSError as exc:  # a busy port, an address not on this host: one line, not a trace
        await gateway.stop()
        await runner.cleanup()
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartError(f"cannot listen on {host}:{port}: {why}") from None
    bound = server.sockets[0].getsockname()[1]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    return RunningServer(gateway, runner, server, url, fast)


async def serve(config: GatewayConfig, host: str | None = None, port: int | None = None) -> None:
    server = await start_server(config, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gw = server.gateway
    log.info(
        "gateway started: channels %s; store %s; %d workers, %d more for jobs of one batch",
        ", ".join(sorted(gw.channels)) or "none",
        redact_url(config.store.url),
        config.pipeline.workers,
        config.pipeline.small_job_workers,
        extra={"event": "started", "channels": sorted(gw.channels), "store": redact_url(config.store.url)},
    )
    announce(server.url)
    await stop.wait()
    log.info("shutting down: no new jobs; finishing batches under way", extra={"event": "stopping"})
    await server.stop()
    log.info("stopped", extra={"event": "stopped"})


def announce(url: str) -> None:
    """`gateway listening on URL`, once: on stdout for scripts (and people) with text logs,
    as a log line with its own field with JSON logs (stdout is not JSON)."""
    if json_logs():
        log.info("gateway listening on %s", url, extra={"event": "listening", "url": url})
    else:
        print(f"gateway listening on {url}", flush=True)
