"""A throwaway `redis-server` on a free port, for tests and benchmarks of the Redis store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class RedisServer:
    """`with RedisServer() as url:` a redis-server of its own, stopped on exit.

    `appendonly`: the durable setting `docs/deployment.md` asks for (append-only file,
    fsync every second); off, nothing is written to disk."""

    def __init__(self, appendonly: bool = False, workdir: str | Path | None = None):
        self.appendonly = appendonly
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> str:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory()
            self.workdir = self._tmp.name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *durability,
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self.url
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
