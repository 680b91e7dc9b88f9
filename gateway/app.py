"""Assembling the parts from a config, and their start-up and shutdown order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.callbacks import CallbackSender
from gateway.channel import Channel
from gateway.checkconfig import references
from gateway.clock import Clock
from gateway.config import ConfigError, GatewayConfig, seconds
from gateway.dispatch.dispatcher import Dispatcher
from gateway.loader import channel_classes, configure_channels, plugin_manager
from gateway.metrics import Metrics
from gateway.personalize.templates import cache_lookups
from gateway.pipeline import Pipeline
from gateway.pipeline.events import Subscriptions
from gateway.policy.engine import load_policy
from gateway.retention import purge_ended
from gateway.runner import Admission, Runner
from gateway.scheduler import Scheduler
from gateway.store import JobRecord, Store, make_store

log = logging.getLogger(__name__)


class Gateway:
    """The running gateway: store, plugins, channels, pipeline and workers."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        extra_plugins: tuple[Any, ...] = (),
        store: Store | None = None,
        run_background: bool = True,
    ):
        self.config = config
        self.clock = clock or Clock()
        self.pm = plugin_manager(config, extra_plugins)
        classes = channel_classes(self.pm)
        if problems := references(config, classes):  # a typo would switch a rule off silently
            raise ConfigError(problems)
        self.channel_specs = configure_channels(config, classes)
        # The subscription groups jobs may name: those of every installed channel.
        self.subscription_groups = frozenset(cls.subscription_group for cls in classes.values())
        self.store = store or make_store(
            config.store,
            queue_limit=config.intake.max_inflight_recipients,
            queue_jobs=config.intake.max_queued_jobs,
            queue_age=seconds(config.intake.max_queue_age),
        )
        self.admission = Admission(config.intake.max_inflight_recipients)
        self.metrics = Metrics(
            queue_depth=lambda: self.admission.inflight,
            template_cache=cache_lookups,
            jobs_queued=lambda: self.runner.backlog() if self.runner is not None else (0, 0.0),
            breakers=lambda: self.pipeline.dispatcher.breaker_gauge() if self.runner is not None else {},
        )
        self.policy = load_policy(config)
        self.channels: dict[str, Channel] = {}
        self.runner: Runner | None = None
        self.scheduler: Scheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.senders: dict[str, CallbackSender] = {}
        self.accepting = False
        # Tests drive the scheduler themselves (with a fake clock): `run_background=False`.
        self.run_background = run_background

    @property
    def ready(self) -> bool:
        return self.accepting and self.runner is not None and len(self.channels) == len(self.channel_specs)

    async def start(self) -> None:
        await self.store.open()
        self.policy.opt_outs = await self.store.opt_outs()
        for name, (cls, channel_config) in self.channel_specs.items():
            self.channels[name] = await cls.create(channel_config)
        dispatcher = Dispatcher(self.config.delivery, self.pm, self.metrics, self.clock)
        self.pipeline = Pipeline(
            self.store,
            self.channels,
            dispatcher,
            self.pm,
            self.metrics,
            self.clock,
            self.config.pipeline.batch_size,
            self.policy,
        )
        self.pipeline.subscriptions = Subscriptions(
            {tenant: frozenset(c.events) for tenant, c in self.config.callbacks.items()}, self._nudge
        )
        self.senders = {
            tenant: CallbackSender(self.store, tenant, c, self.metrics, self.clock)
            for tenant, c in self.config.callbacks.items()
        }
        pipeline = self.config.pipeline
        self.runner = Runner(self.pipeline, self.admission, pipeline.workers, self.clock, pipeline.small_job_workers)
        self.scheduler = Scheduler(self.store, self.pipeline, self.config.schedule, self.clock)
        # Alive before resuming: no other process may take over the jobs resumed here.
        await self.store.heartbeat(3 * seconds(self.config.store.heartbeat))
        await self._resume()
        if self.run_background:
            self._tasks = [
                asyncio.create_task(self._housekeeping(), name="housekeeping"),
                asyncio.create_task(self._provider_summaries(), name="provider-summaries"),
                asyncio.create_task(self.scheduler.loop(), name="scheduler"),
                asyncio.create_task(self._take_over_orphans(), name="takeover"),
            ]
        for tenant, sender in self.senders.items():  # status callbacks: whatever the clock
            self._tasks.append(asyncio.create_task(sender.run(), name=f"callbacks-{tenant}"))
        if self.store.shared_queue:  # intake itself: runs whatever the clock
            self._tasks.append(asyncio.create_task(self._take_jobs(), name="take-jobs"))
        self.accepting = True

    async def _take_jobs(self) -> None:
        """Shared queue: take accepted jobs while this process has room for them, an idle
        worker and in-flight recipients under the bound. Taking no more than that leaves
        the rest to the other processes."""
        runner = self.runner
        assert runner is not None
        while True:
            try:
                room = runner.room()
                if room <= 0 or self.admission.inflight >= self.admission.limit:
                    await runner.wait_for_change()
                    continue
                for record in await self.store.take_jobs(room, wait=1.0):
                    self._submit(record, "took")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("taking jobs from the store: %s; retrying", exc)
                await asyncio.sleep(0.5)

    def _submit(self, record: JobRecord, how: str, level: int = logging.INFO) -> None:
        """Run a stored job from its cursor (unless this process already runs it)."""
        assert self.runner is not None
        if self.runner.has(record.id):
            return
        self.admission.force(record.recipients - record.cursor)
        self.runner.submit(record, again=how != "took")
        log.log(level, "%s job %s at recipient %d of %d", how, record.id, record.cursor, record.recipients)

    async def _take_over_orphans(self) -> None:
        """Heartbeat, and pick up the unfinished jobs of processes that stopped (a shared
        store only: the embedded one has a single process)."""
        every = seconds(self.config.store.heartbeat)
        while True:
            try:
                await self.store.heartbeat(3 * every)
                for record in await self.store.claim_orphaned_jobs():
                    self._submit(record, "took over (its process stopped)", logging.WARNING)
            except Exception:
                log.exception("heartbeat / takeover")
            await asyncio.sleep(every)

    async def _housekeeping(self, every: float = 600) -> None:
        """Expired idempotency keys, cap history older than any window, and the store's
        own upkeep (the embedded store's WAL)."""
        while True:
            try:
                now = self.clock.now()
                await purge_ended(self.store, now - seconds(self.config.retention.jobs))
                await self.store.purge_expired(now)
                await self.store.prune_caps(now - self.policy.longest_window)
                await self.store.housekeep()
            except Exception:
                log.exception("housekeeping")
            await asyncio.sleep(every)

    def _nudge(self, tenant: str) -> None:
        """A write with status callbacks is on its way: its sender looks soon after."""
        sender = self.senders.get(tenant)
        if sender is not None:
            asyncio.get_running_loop().call_later(0.02, sender.wake.set)

    async def _provider_summaries(self) -> None:
        """Provider trouble, one line per provider and interval (not one per message)."""
        every = seconds(self.config.logging.provider_summary)
        while True:
            await asyncio.sleep(every)
            self.pipeline.dispatcher.trouble.flush(every)

    async def _resume(self) -> None:
        """Jobs accepted before a crash or a stop carry on from their stored cursor.
        Recipients before the cursor have their decisions stored and are not sent again."""
        for record in await self.store.resumable_jobs():
            self._submit(record, "resuming")

    async def stop(self) -> None:
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.stop(seconds(self.config.server.shutdown_timeout))
            await self.pipeline.acklog.drain()
            self.pipeline.dispatcher.trouble.flush(seconds(self.config.logging.provider_summary))
        for sender in self.senders.values():
            await sender.aclose()
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)
        await self.store.close()
