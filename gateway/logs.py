"""Logging for people (`text`) and machines (`json`, one object per line).

Lines that describe something (a job accepted or completed, a provider's trouble) carry
their facts as fields (`extra={"event": "job.completed", "job_id": ...}`): the JSON format
puts them in the object, the text format already has them in the message.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

from gateway.config import LoggingConfig

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_encode = msgspec.json.Encoder().encode
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
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


def _iso(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def configure_logging(config: LoggingConfig | None = None, verbose: bool = False) -> None:
    """One handler on stderr, in the configured format and level (`-v`: debug)."""
    config = config or LoggingConfig()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else config.level.upper())
    for noisy in ("aiohttp.access", "asyncio"):  # their per-request and debug chatter
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def json_logs() -> bool:
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
