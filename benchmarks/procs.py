"""The processes the benchmark drivers start: starting them, what /proc says of them, and
the small job server the reference processes run (`serve_jobs`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each of a process's threads so far, by thread id (the
    main thread's id is the process's)."""
    found: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        found[int(task.name)] = cpu_seconds_of(task / "stat")
    return found


def cpu_seconds_of(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def spawn(
    *args: str, env: dict[str, str], ready: str, drain: bool = False
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a process and wait for its line starting with `ready`; (process, that line's last
    word). `drain`: read and drop the rest of its output (else the caller reads it)."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            raise SystemExit(f"{args} exited before it was ready")
        if line.startswith(ready):
            if drain:  # a process writing to a full pipe (the gateway's job lines) would block on it
                _DRAINS.add(asyncio.get_running_loop().create_task(_drain(proc.stdout)))
            return proc, line.split()[-1]


_DRAINS: set[asyncio.Task[None]] = set()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def start_gateway(
    path: Path, *, store: str, channels: str, api_keys_env: str, env: dict[str, str], profile: str | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """`gateway serve` in a process of its own, on a free port, quiet hours off; `store` and
    `channels` are TOML (the [store] section's lines, whole [channels...] sections).
    `profile`: run it under cProfile, writing the stats to this file when it stops."""
    path.write_text(f"""
[server]
port = 0
api_keys_env = "{api_keys_env}"
[store]
{store}
[quiet_hours]
enabled = false
{channels}
""")
    profiler = ("-m", "cProfile", "-o", profile) if profile else ()
    return await spawn(
        sys.executable,
        *profiler,
        "-m",
        "gateway",
        "--config",
        str(path),
        "serve",
        env=env,
        ready="gateway listening on",
        drain=True,
    )


async def serve_jobs(handler: Any, name: str) -> None:
    """An aiohttp server on a free port with `handler` at `POST /v1/jobs`; it prints
    `<name> listening on <url>` and runs until killed."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/jobs", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"{name} listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()
