"""Per-stage CPU cost of the hot path, per recipient, with references in the same run.

Stages: decode (msgspec into the Job Structs) vs `json.loads` of the same body; intake
checks; policy; personalize (variant choice + rendering every content kind of the cart's
five channels, compiled) vs python-liquid rendering the same chosen templates.

    .venv/bin/python benchmarks/stages.py [--recipients 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOW = 1_764_331_200.0  # 2026-11-28T12:00:00Z: within the cart example's expires_at
sys.path.insert(0, str(REPO))

from gateway.config import GatewayConfig, LimitsConfig  # noqa: E402
from gateway.intake.validate import check_job  # noqa: E402
from gateway.loader import channel_classes, plugin_manager  # noqa: E402
from gateway.model.job import JOB_DECODER  # noqa: E402
from gateway.personalize.render import Personalizer, context  # noqa: E402
from gateway.personalize.templates import compile_job  # noqa: E402
from gateway.policy.engine import Screening, defaults  # noqa: E402
from gateway.testing.examples import example_jobs  # noqa: E402


def scaled_cart(n: int) -> bytes:
    """The shared cart example with its 4 recipients repeated and varied to `n`."""
    job = json.loads(dict(example_jobs())["job-cart-reminder.json"])
    base = job["recipients"]
    recipients = []
    for i in range(n):
        r = json.loads(json.dumps(base[i % len(base)]))
        r["user_id"] = f"u-{i}"
        if "first_name" in r["attributes"] and i % 7 == 0:
            del r["attributes"]["first_name"]
        recipients.append(r)
    job["recipients"] = recipients
    return json.dumps(job).encode()


def _channels() -> dict[str, Any]:
    """The built-in channel classes as plain objects (no connections): what policy needs."""

    classes = channel_classes(plugin_manager(GatewayConfig()))
    return {name: cls.__new__(cls) for name, cls in classes.items()}


async def _reserve_all(job: Any, n: int) -> float:
    """Policy for every recipient on each of the cart's five channels: subscription,
    device, quiet hours, and two cap rules reserved per batch of 500 in the embedded store.
    CPU seconds of the loop alone (store set-up excluded), per recipient-channel later."""
    import tempfile

    from gateway.policy.engine import load_policy
    from gateway.store.sqlite import SQLiteStore

    policy = load_policy(
        GatewayConfig(
            caps=[
                {"name": "daily", "channels": ["any"], "limit": 3, "window": "24h"},
                {"name": "promo-week", "tags": ["promo"], "limit": 2, "calendar": "week", "action": "defer"},
            ]
        )
    )
    channels = _channels()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(f"{tmp}/bench.db", "full")
        await store.open()
        now = NOW
        started = time.process_time()
        for lo in range(0, n, 500):
            requests = []
            for r in job.recipients[lo : lo + 500]:
                for name in job.channels:
                    screening = policy.check(job, r, channels.get(name), name, now)
                    if isinstance(screening, Screening):
                        requests.append(policy.caps_request(job, r, name, screening.tz, now))
            await store.reserve_caps(requests, now)
        spent = time.process_time() - started
        await store.close()
    return spent


def best_of(fn: Any, repeat: int = 5) -> float:
    """Least CPU seconds over `repeat` runs (a function may return its own measurement)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        measured = fn()
        times.append(measured if isinstance(measured, float) else time.process_time() - start)
    return min(times)


def run(n: int) -> dict[str, Any]:
    body = scaled_cart(n)
    job = JOB_DECODER.decode(body)
    variants = compile_job(job, 20_000)
    personalizer = Personalizer(job, variants, {})

    by_name = {v.name: v for v in variants}
    chosen = [personalizer.choose(r).variant for r in job.recipients]

    def render_all() -> None:
        for r in job.recipients:
            personalizer.choose(r)

    def reference_all() -> None:
        """python-liquid rendering the templates of each recipient's chosen variant, for
        each of the cart's channels (push shared by apns/fcm/webpush, as the gateway does)."""
        for r, name in zip(job.recipients, chosen, strict=True):
            if name is None:
                continue
            scope = context(job, r, "apns")
            for kind in by_name[name].kinds.values():
                for field in kind.all_fields():
                    field.template.render(**scope)

    policy = defaults()

    channels = _channels()

    def policy_all() -> None:
        for r in job.recipients:
            for name in job.channels:
                policy.check(job, r, channels.get(name), name, NOW)

    def policy_with_caps() -> float:
        return asyncio.run(_reserve_all(job, n))

    figures = {
        "decode_us": best_of(lambda: JOB_DECODER.decode(body)) / n * 1e6,
        "json_loads_us": best_of(lambda: json.loads(body)) / n * 1e6,
        "intake_checks_us": best_of(lambda: check_job(job, LimitsConfig())) / n * 1e6,
        "personalize_us": best_of(render_all, 3) / n * 1e6,
        "python_liquid_render_us": best_of(reference_all, 3) / n * 1e6,
        # per recipient *and channel*: the cart job has five channels
        "policy_checks_us_per_message": best_of(policy_all) / (n * 5) * 1e6,
        "policy_with_caps_us_per_message": best_of(policy_with_caps, 3) / (n * 5) * 1e6,
    }
    figures["decode_vs_json_loads"] = figures["json_loads_us"] / figures["decode_us"]
    figures["personalize_vs_python_liquid"] = figures["python_liquid_render_us"] / figures["personalize_us"]
    return {"recipients": n, "body_bytes": len(body), **{k: round(v, 3) for k, v in figures.items()}}


def main() -> None:
    from gateway.cli import tune_gc

    tune_gc()  # as `gateway serve` runs
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(run(args.recipients), indent=2))


if __name__ == "__main__":
    main()
