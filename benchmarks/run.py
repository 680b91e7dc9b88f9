"""`make bench`: every benchmark, results to benchmarks/results/<date>-<commit>.json.

    .venv/bin/python benchmarks/run.py [--quick]

--quick (well under 2 minutes) is for development; commit the results of a full run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import render
    import stages
    import webhook_e2e

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        import asyncio

        runner = asyncio.run
    n_stage, n_e2e = (2_000, 10_000) if args.quick else (10_000, 50_000)
    print(f"stages: {n_stage} recipients ...", flush=True)
    stage = stages.run(n_stage)
    print(json.dumps(stage, indent=2))
    print("render: compiled vs python-liquid per template field ...", flush=True)
    rendering = render.run()
    print(json.dumps({k: v for k, v in rendering.items() if k != "rows"}, indent=2))
    print(f"webhook end to end: {n_e2e} recipients ...", flush=True)
    e2e = runner(webhook_e2e.run(n_e2e, 1000))
    print(json.dumps(e2e, indent=2))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or "uncommitted"
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "mode": "quick" if args.quick else "full",
        "command": "make bench" + (" ARGS=--quick" if args.quick else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "processor": platform.machine()},
        "stages_us_per_recipient": stage,
        "render_us_per_field": rendering,
        "webhook_end_to_end": e2e,
    }
    out = HERE / "results" / f"{result['date']}-{commit}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
