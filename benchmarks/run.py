"""`make bench`: every benchmark, results to benchmarks/results/<date>-<commit>.json.

    .venv/bin/python benchmarks/run.py [--quick]

--quick (well under 2 minutes) is for development; commit the results of a full run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _section(title: str, value: Any) -> Any:
    shown = {k: v for k, v in value.items() if k != "rows"} if isinstance(value, dict) else value
    print(f"{title}:\n{json.dumps(shown, indent=2)}", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import apprise_peer
    import channels
    import distributed
    import pipeline
    import render
    import stages
    import webhook_e2e

    from gateway.cli import tune_gc

    tune_gc()  # as `gateway serve` runs
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    quick = args.quick
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=HERE).stdout.strip() or "uncommitted",
        "mode": "quick" if quick else "full",
        "command": "make bench" + (" ARGS=--quick" if quick else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "processor": platform.machine()},
    }
    result["stages_us"] = _section("stages", stages.run(2_000 if quick else 10_000))
    result["render_us_per_field"] = _section("render", render.run())
    result["pipeline"] = _section("pipeline", asyncio.run(pipeline.run(5_000 if quick else 100_000)))
    result["webhook_end_to_end"] = _section("webhook end to end", runner(webhook_e2e.run(10_000 if quick else 50_000,
                                                                                       1000)))
    result["channels"] = _section("channels", runner(channels.run(1_000 if quick else 3_000, None)))
    result["distributed"] = _section("distributed", runner(distributed.run(5_000 if quick else 20_000)))
    try:
        import apprise  # noqa: F401

        result["peer_apprise"] = _section("apprise", asyncio.run(apprise_peer.run(300 if quick else 2_000)))
    except ImportError:
        print("apprise not installed (pip install -e '.[bench]'): peer comparison skipped")
    out = HERE / "results" / f"{result['date']}-{result['commit']}{'-quick' if quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
