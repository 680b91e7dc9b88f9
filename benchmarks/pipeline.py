"""The hot path in one number: CPU per message through the real pipeline.

The shared cart example scaled to N varied recipients (some missing data, four time
zones, one invalid), its five channels, two cap rules in force, quiet hours on, at
2026-11-28T12:00Z, through `Pipeline.run` (batches pipelined; plan: policy, variant,
render, fit; caps reserved per batch in the embedded store; dispatch) into *null* channels
that accept everything, each channel's decisions written to the store as they are made.
The per-record figures are the CPU between two consecutive record writes, per decision. A message is one recipient on
one channel. Decode (msgspec) is measured beside it, and `json.loads` of the same body as
the reference.

    .venv/bin/python benchmarks/pipeline.py [--recipients 100000] [--callbacks]

`--callbacks` runs the job twice in one process, without and with status callbacks for its
tenant (every event type: each record also writes its events to the outbox, in the same
commit), and reports both and the difference per message. Delivering them is one POST per
recorded batch, outside the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import stages  # noqa: E402

from gateway.channel import Channel  # noqa: E402
from gateway.clock import FakeClock  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.dispatch.dispatcher import Dispatcher  # noqa: E402
from gateway.hookspecs import hookimpl  # noqa: E402
from gateway.loader import channel_classes, plugin_manager  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.model.delivery import Delivery, Result, Sent  # noqa: E402
from gateway.model.job import JOB_DECODER  # noqa: E402
from gateway.personalize.templates import compile_job  # noqa: E402
from gateway.pipeline import Pipeline, RunningJob  # noqa: E402
from gateway.pipeline.events import Subscriptions  # noqa: E402
from gateway.policy.engine import load_policy  # noqa: E402
from gateway.store.base import JobRecord  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402

EVERY_EVENT = frozenset({"decisions", "job.completed", "job.cancelled", "token.invalidated", "opt_out.recorded"})


class Recorder:
    """The outcomes recorded."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}

    @hookimpl
    def decisions_recorded(self, job_id: str, decisions: list[Any]) -> None:
        for decision in decisions:
            self.outcomes[decision.outcome] = self.outcomes.get(decision.outcome, 0) + 1


def null_channel(real: type[Channel]) -> Channel:
    """The real channel's policy and payload behaviour, without a provider round trip."""

    class Null(real):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            pass

        def max_in_flight(self) -> int | None:
            return None

        def provider(self, delivery: Delivery) -> str:
            return self.name

        async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
            return [Sent() for _ in deliveries]

    return Null()


async def run(n: int, batch: int = 500, callbacks: bool = False) -> dict[str, Any]:
    body = stages.scaled_cart(n)
    started = time.process_time()
    job = JOB_DECODER.decode(body)
    decode = time.process_time() - started
    started = time.process_time()
    json.loads(body)
    loads = time.process_time() - started
    config = GatewayConfig(
        caps=[
            {"name": "daily", "channels": ["any"], "limit": 3, "window": "24h"},
            {"name": "promo-week", "tags": ["promo"], "limit": 2, "calendar": "week", "action": "defer"},
        ]
    )
    pm = plugin_manager(config)
    channels = {name: null_channel(cls) for name, cls in channel_classes(pm).items()}
    clock = FakeClock(stages.NOW)
    metrics = Metrics()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(f"{tmp}/bench.db", "full")
        await store.open()
        pipeline = Pipeline(
            store,
            channels,
            Dispatcher(config.delivery, pm, metrics, clock),
            pm,
            metrics,
            clock,
            batch,
            load_policy(config),
        )
        record = JobRecord(
            id="bench", campaign=job.campaign, state="accepted", recipients=n, cursor=0, warnings=[], created_at=0
        )
        await store.accept_job(record, body, None, stages.NOW)
        if callbacks:
            pipeline.subscriptions = Subscriptions({"default": EVERY_EVENT})
        running = RunningJob("bench", job, compile_job(job, 20_000), 0, 0.0)
        recorder = Recorder()
        pm.register(recorder)
        started = time.process_time()
        await pipeline.run(running)
        total = time.process_time() - started
        await store.close()
    outcomes = recorder.outcomes
    messages = n * len(job.channels)
    return {
        "recipients": n,
        "messages": messages,
        "outcomes": outcomes,
        "pipeline_us_per_message": round(total / messages * 1e6, 2),
        "decode_us_per_message": round(decode / messages * 1e6, 2),
        "json_loads_us_per_message": round(loads / messages * 1e6, 2),
        "hot_path_total_us_per_message": round((total + decode) / messages * 1e6, 2),
    }


def main() -> None:
    from gateway.cli import tune_gc

    tune_gc()  # as `gateway serve` runs
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--callbacks", action="store_true", help="also with status callbacks, side by side")
    args = parser.parse_args()
    if not args.callbacks:
        print(json.dumps(asyncio.run(run(args.recipients)), indent=2))
        return
    without = asyncio.run(run(args.recipients))
    with_callbacks = asyncio.run(run(args.recipients, callbacks=True))
    key = "pipeline_us_per_message"
    extra = round(with_callbacks[key] - without[key], 2)
    print(
        json.dumps({"without": without, "with_callbacks": with_callbacks, "callbacks_us_per_message": extra}, indent=2)
    )


if __name__ == "__main__":
    main()
