"""Stores behind one interface; `open_store` picks the backend from `store.url`."""

from __future__ import annotations

from gateway.config import ConfigError, StoreConfig, seconds
from gateway.store.base import (
    DecisionCursor,
    DecisionQuery,
    DeferredItem,
    IdempotencyRecord,
    JobCursor,
    JobQuery,
    JobRecord,
    Store,
    StoreBusy,
    StoreUnavailable,
)

__all__ = [
    "DecisionCursor",
    "DecisionQuery",
    "DeferredItem",
    "IdempotencyRecord",
    "JobCursor",
    "JobQuery",
    "JobRecord",
    "Store",
    "StoreBusy",
    "StoreUnavailable",
    "make_store",
]


def make_store(config: StoreConfig, queue_limit: int = 0, queue_jobs: int = 0, queue_age: float = 0.0) -> Store:
    """For a shared queue, the bounds past which intake answers 429: recipients and jobs
    accepted and not yet taken by any process, and how long the oldest has waited (s)."""
    url = config.url
    if url.startswith("sqlite:"):
        from gateway.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:").removeprefix("//")
        return SQLiteStore(
            path or ":memory:", config.synchronous, config.group_commit_max, seconds(config.group_commit_wait)
        )
    if url.startswith(("redis://", "rediss://", "unix://")):
        import socket

        from gateway.store.redis import RedisStore

        return RedisStore(
            url,
            prefix=config.key_prefix,
            instance=config.instance or socket.gethostname(),
            queue_limit=queue_limit,
            queue_jobs=queue_jobs,
            queue_age=queue_age,
        )
    raise ConfigError([f"store.url: unsupported scheme in {url!r} (supported: sqlite:PATH, redis://HOST:PORT/DB)"])
