"""Status callbacks: each tenant's outbox delivered to its endpoint, signed (Standard
Webhooks), in the order written, at least once.

One sender per tenant with a `[callbacks.<tenant>]` table. It reads the oldest events,
POSTs each as `{"id", "type", "created_at", "data"}` with the event's id as `webhook-id`
(a redelivery carries the same id: receivers deduplicate on it), and forgets an event only
once the endpoint answered 2xx, so a crash or `kill -9` redelivers at most what was in
flight. A failing endpoint holds the tenant's later events (order is kept), retried with
backoff up to 60 s for `max_age`; an event older than that is given up with a log line.
On a shared store one process at a time delivers a tenant's events (a lease)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from gateway.clock import Clock
from gateway.config import CallbackConfig, seconds
from gateway.metrics import Metrics
from gateway.model.instant import rfc3339
from gateway.store import Store
from gateway.store.base import OutboxEvent
from gateway.transport.seam import http1_transport
from gateway.transport.webhooks import webhook_headers, webhook_key

log = logging.getLogger(__name__)
PAGE = 100
LEASE = 30.0  # seconds a process holds a tenant's delivery without renewing it
BACKOFF_MAX = 60.0


def envelope(event: OutboxEvent) -> bytes:
    head = f'{{"id":"{event.id}","type":"{event.type}","created_at":"{rfc3339(event.at)}","data":'
    return head.encode() + event.data + b"}"


class CallbackSender:
    def __init__(self, store: Store, tenant: str, config: CallbackConfig, metrics: Metrics, clock: Clock):
        self.store, self.tenant, self.metrics, self.clock = store, tenant, metrics, clock
        self.key = webhook_key(config.secret.resolve(f"callbacks.{tenant}.secret").reveal())
        self.pool = http1_transport("gateway", config.url, max_idle=2)
        self.types = frozenset(config.events)
        self.max_age = seconds(config.max_age)
        self.timeout = seconds(config.timeout)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        self.wake = asyncio.Event()
        self.failing_since: float | None = None  # monotonic time of the streak's first failure
        self.said_at = 0.0
        self.failures = 0

    async def run(self) -> None:
        while True:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store unreachable, most likely: try again shortly
                log.warning("status callbacks of tenant %s: %s; retrying", self.tenant, exc)
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        if not await self.store.outbox_lease(self.tenant, self.owner, LEASE):
            await asyncio.sleep(LEASE / 3)  # another process delivers them
            return
        events = await self.store.outbox(self.tenant, PAGE)
        self.metrics.callback_lag[(self.tenant,)] = self.clock.now() - events[0].at if events else 0.0
        if not events:
            self.wake.clear()
            try:  # woken as writes with events go to the store; a look now and then for other processes'
                await asyncio.wait_for(self.wake.wait(), 0.5)
            except TimeoutError:
                pass
            return
        for event in events:
            if event.type in self.types:
                await self._deliver(event)
            await self.store.outbox_done(self.tenant, event.seq)

    async def _deliver(self, event: OutboxEvent) -> None:
        """Until the endpoint takes it (2xx) or it is too old."""
        delay = 0.5
        body = envelope(event)
        while True:
            problem = await self._post(event, body)
            if problem is None:
                self.metrics.callbacks_delivered.inc(self.tenant)
                self._streak_ends()
                return
            self.metrics.callback_failures.inc(self.tenant)
            self._streak_goes_on(problem)
            if self.clock.now() - event.at > self.max_age:
                self.metrics.callbacks_dropped.inc(self.tenant)
                log.warning(
                    "status callback %s (%s) of tenant %s given up after %s: %s",
                    event.id, event.type, self.tenant, rfc3339(event.at), problem,
                    extra={"event": "callback.dropped", "tenant": self.tenant, "callback_id": event.id},
                )  # fmt: skip
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            await self.store.outbox_lease(self.tenant, self.owner, LEASE)

    def _streak_goes_on(self, problem: str) -> None:
        """A failing endpoint is said when it starts failing, then once a minute while it
        goes on (its events wait meanwhile), never once per attempt."""
        now = self.clock.monotonic()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self.said_at = now
        elif now - self.said_at < 60:
            return
        self.said_at = now
        log.warning(
            "status callbacks of tenant %s: the endpoint fails (%s; %d attempts in %.0fs); events wait and are retried",
            self.tenant, problem, self.failures, now - self.failing_since,
            extra={"event": "callback.failing", "tenant": self.tenant, "problem": problem, "attempts": self.failures},
        )  # fmt: skip

    def _streak_ends(self) -> None:
        if self.failing_since is None:
            return
        log.info(
            "status callbacks of tenant %s: the endpoint takes events again after %d failed attempts in %.0fs",
            self.tenant, self.failures, self.clock.monotonic() - self.failing_since,
            extra={"event": "callback.recovered", "tenant": self.tenant},
        )  # fmt: skip
        self.failing_since, self.failures = None, 0

    async def _post(self, event: OutboxEvent, body: bytes) -> str | None:
        headers = webhook_headers(self.key, event.id, int(time.time()), body)
        try:
            response = await self.pool.post(self.pool.path, headers, body, timeout=self.timeout)
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"connection_error: {type(exc).__name__}"
        return None if 200 <= response.status < 300 else f"HTTP {response.status}"

    async def aclose(self) -> None:
        await self.pool.aclose()
