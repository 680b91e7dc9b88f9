"""Assembling the parts from a config, and their start-up and shutdown order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.channel import Channel
from gateway.clock import Clock
from gateway.config import GatewayConfig, seconds
from gateway.dispatch.retry import Retrier
from gateway.intake.model import JOB_DECODER
from gateway.metrics import Metrics
from gateway.personalize.templates import compile_job
from gateway.pipeline import Pipeline, RunningJob
from gateway.plugins import channel_classes, configure_channels, plugin_manager
from gateway.runner import Admission, Runner
from gateway.store import Store, make_store

log = logging.getLogger(__name__)


class Gateway:
    """The running gateway: store, plugins, channels, pipeline and workers."""

    def __init__(self, config: GatewayConfig, *, clock: Clock | None = None, extra_plugins: tuple[Any, ...] = (),
                 store: Store | None = None):
        self.config = config
        self.clock = clock or Clock()
        self.pm = plugin_manager(config, extra_plugins)
        self.channel_specs = configure_channels(config, channel_classes(self.pm))
        self.store = store or make_store(config.store)
        self.admission = Admission(config.intake.max_inflight_recipients)
        self.metrics = Metrics(queue_depth=lambda: self.admission.inflight)
        self.channels: dict[str, Channel] = {}
        self.runner: Runner | None = None
        self.accepting = False
        self._purger: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.accepting and self.runner is not None and len(self.channels) == len(self.channel_specs)

    async def start(self) -> None:
        await self.store.open()
        for name, (cls, channel_config) in self.channel_specs.items():
            self.channels[name] = await cls.create(channel_config)
        retrier = Retrier(self.config.delivery, self.pm, self.metrics, self.clock)
        pipeline = Pipeline(self.store, self.channels, retrier, self.pm, self.metrics, self.clock,
                            self.config.pipeline.batch_size)
        self.runner = Runner(pipeline, self.admission, self.config.pipeline.workers)
        await self._resume()
        self._purger = asyncio.create_task(self._purge_idempotency_keys(), name="idempotency-purge")
        self.accepting = True

    async def _purge_idempotency_keys(self, every: float = 600) -> None:
        while True:
            try:
                await self.store.purge_expired(self.clock.now())
            except Exception:
                log.exception("purging expired idempotency keys")
            await asyncio.sleep(every)

    async def _resume(self) -> None:
        """Jobs accepted before a crash or a stop carry on from their stored cursor.
        Recipients before the cursor have their decisions stored and are not sent again."""
        assert self.runner is not None
        for record in await self.store.resumable_jobs():
            job = JOB_DECODER.decode(await self.store.job_body(record.id))
            variants = compile_job(job, max_template_chars=10**9)  # validated at intake
            self.admission.force(record.recipients - record.cursor)
            self.runner.submit(RunningJob(record.id, job, variants, record.cursor, self.clock.monotonic()))
            log.info("resuming job %s at recipient %d of %d", record.id, record.cursor, record.recipients)

    async def stop(self) -> None:
        self.accepting = False
        if self._purger is not None:
            self._purger.cancel()
        if self.runner is not None:
            await self.runner.stop(seconds(self.config.server.shutdown_timeout))
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)
        await self.store.close()
