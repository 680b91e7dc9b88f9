"""Instants as the API shows them: RFC 3339 in UTC (`2026-11-28T13:00:00Z`, with the
fraction of a second when there is one). Stores keep epoch seconds."""

from __future__ import annotations

import functools
from datetime import UTC, datetime


@functools.lru_cache(maxsize=4096)
def rfc3339(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")
