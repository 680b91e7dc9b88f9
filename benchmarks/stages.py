"""Per-stage CPU cost of the hot path, per recipient, with references in the same run.

Stages: decode (msgspec into the Job Structs) vs `json.loads` of the same body; intake
checks; policy; personalize (variant choice + rendering every content kind of the cart's
five channels, compiled) vs python-liquid rendering the same chosen templates.

    .venv/bin/python benchmarks/stages.py [--recipients 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import LimitsConfig  # noqa: E402
from gateway.demo.run import example_jobs  # noqa: E402
from gateway.intake.model import JOB_DECODER  # noqa: E402
from gateway.intake.validate import check_job  # noqa: E402
from gateway.personalize.render import Personalizer, context  # noqa: E402
from gateway.personalize.templates import compile_job  # noqa: E402
from gateway.plugins import channel_classes, plugin_manager  # noqa: E402
from gateway.policy import rules  # noqa: E402


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


def best_of(fn: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def run(n: int) -> dict[str, Any]:
    body = scaled_cart(n)
    job = JOB_DECODER.decode(body)
    variants = compile_job(job, 20_000)
    personalizer = Personalizer(job, variants, {})
    from gateway.config import GatewayConfig

    speaker_cls = channel_classes(plugin_manager(GatewayConfig()))["speaker"]
    speaker = speaker_cls.__new__(speaker_cls)
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

    def policy_all() -> None:
        for r in job.recipients:
            rules.check(job, r, speaker, 1.8e9)

    figures = {
        "decode_us": best_of(lambda: JOB_DECODER.decode(body)) / n * 1e6,
        "json_loads_us": best_of(lambda: json.loads(body)) / n * 1e6,
        "intake_checks_us": best_of(lambda: check_job(job, LimitsConfig())) / n * 1e6,
        "personalize_us": best_of(render_all, 3) / n * 1e6,
        "python_liquid_render_us": best_of(reference_all, 3) / n * 1e6,
        "policy_us": best_of(policy_all) / n * 1e6,
    }
    figures["decode_vs_json_loads"] = figures["json_loads_us"] / figures["decode_us"]
    figures["personalize_vs_python_liquid"] = figures["python_liquid_render_us"] / figures["personalize_us"]
    return {"recipients": n, "body_bytes": len(body), **{k: round(v, 3) for k, v in figures.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(run(args.recipients), indent=2))


if __name__ == "__main__":
    main()
