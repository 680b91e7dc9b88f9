"""Running the gateway as a server: bind, serve, and stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from gateway.app import Gateway
from gateway.config import ConfigError, GatewayConfig, Secret, api_keys, seconds
from gateway.intake.api import make_app
from gateway.intake.guard import GuardedProtocol
from gateway.intake.guard import log as http_log

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_for(config: GatewayConfig, host: str) -> list[Secret]:
    keys = api_keys(config.server)
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
    stopped: bool = False

    async def stop(self) -> None:
        """Stop accepting connections, finish or journal in-flight work, close."""
        if self.stopped:
            return
        self.stopped = True
        self.gateway.accepting = False
        self.server.close()
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
    # Our own listening socket rather than aiohttp's TCPSite: each connection goes through
    # the header clock (intake/guard.py), which aiohttp's server does not have.
    server = await asyncio.get_running_loop().create_server(
        lambda: GuardedProtocol(handlers(), header_timeout), host, port, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    return RunningServer(gateway, runner, server, url)


async def serve(config: GatewayConfig, host: str | None = None, port: int | None = None) -> None:
    server = await start_server(config, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("gateway listening on %s (channels: %s)", server.url, ", ".join(sorted(server.gateway.channels)) or "none")
    print(f"gateway listening on {server.url}", flush=True)
    await stop.wait()
    log.info("shutting down: no new jobs; finishing batches under way")
    await server.stop()
