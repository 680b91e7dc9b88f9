"""Logging for people (`text`) and machines (`json`, one object per line).

Lines that describe something (a job accepted or completed, a provider's trouble) carry
their facts as fields (`extra={"event": "job.completed", "job_id": ...}`): the JSON format
puts them in the object, the text format already has them in the message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

from gateway.config import LoggingConfig

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder().encode
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Seconds:
    """A record's time to the second, formatted once a second rather than per line."""

    def __init__(self, fmt: str, convert: Callable[[float], time.struct_time]):
        self.fmt, self.convert = fmt, convert
        self._second, self._text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self.fmt, self.convert(second))
        return self._text


class TextFormatter(logging.Formatter):
    """The standard text format."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _Seconds("%Y-%m-%d %H:%M:%S", self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self._seconds(record.created)}.{int(record.created * 1000) % 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


class TurnHandler(logging.StreamHandler):
    """Lines logged in one turn of the event loop, written to the stream together at its
    end: a busy gateway logs a line or two per job, and a write per line was a system call
    per line. Warnings and worse, and lines logged outside the loop (the store's threads, at
    exit), are written at once, with any lines before them."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._lines: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
            if record.levelno >= logging.WARNING or not self._flush_later():
                self.flush()
        except Exception:
            self.handleError(record)

    def _flush_later(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._flush_on is not loop:
            loop.call_soon(self.flush)
            self._flush_on = loop
        return True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            if self._lines:
                text = "\n".join(self._lines) + "\n"
                self._lines.clear()
                self.stream.write(text)
                self.stream.flush()


def configure_logging(config: LoggingConfig | None = None, verbose: bool = False) -> None:
    """One handler on stderr, in the configured format and level (`-v`: debug)."""
    config = config or LoggingConfig()
    handler = TurnHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else config.level.upper())
    # Which file and line logged a record: neither format shows it, and finding it walks the
    # stack for every line (the switch is documented in logging's source, not its manual).
    logging._srcfile = None
    # Nor the thread, process and process name each record would look up (public switches).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for noisy in ("aiohttp.access", "asyncio"):  # their per-request and debug chatter
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def json_logs() -> bool:
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


class Throttled:
    """For what a provider's failure means rather than that it happened ("check team_id,
    key_id and the key"): each message, told apart by its format string, at most once per
    `interval` seconds, and the next one says how many were held back. A provider that
    refuses 10,000 deliveries leaves one such line (and its counts in the per-provider
    trouble summary), not 10,000."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}  # keyed by format strings: as many as call sites
        self._held: dict[str, int] = {}

    def error(self, msg: str, *args: Any) -> None:
        self._log(logging.ERROR, msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log(logging.WARNING, msg, args)

    def _log(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        last = self._last.get(msg)
        if last is not None and now - last < self.interval:
            self._held[msg] = self._held.get(msg, 0) + 1
            return
        self._last[msg] = now
        held = self._held.pop(msg, 0)
        if held:
            msg, args = f"{msg} (%d more like this since the last such line)", (*args, held)
        self.logger.log(level, msg, *args)
