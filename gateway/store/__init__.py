"""Stores behind one interface; `open_store` picks the backend from `store.url`."""

from __future__ import annotations

from gateway.config import ConfigError, StoreConfig
from gateway.store.base import DeferredItem, IdempotencyRecord, JobRecord, Store, StoreBusy, StoreUnavailable

__all__ = ["DeferredItem", "IdempotencyRecord", "JobRecord", "Store", "StoreBusy", "StoreUnavailable", "make_store"]


def make_store(config: StoreConfig, queue_limit: int = 0) -> Store:
    """`queue_limit`: for a shared queue, the recipients accepted and not yet taken by any
    process past which intake answers 429."""
    url = config.url
    if url.startswith("sqlite:"):
        from gateway.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:").removeprefix("//")
        return SQLiteStore(path or ":memory:", config.synchronous, config.group_commit_max)
    if url.startswith(("redis://", "rediss://", "unix://")):
        import socket

        from gateway.store.redis import RedisStore

        return RedisStore(
            url, prefix=config.key_prefix, instance=config.instance or socket.gethostname(), queue_limit=queue_limit
        )
    raise ConfigError([f"store.url: unsupported scheme in {url!r} (supported: sqlite:PATH, redis://HOST:PORT/DB)"])
