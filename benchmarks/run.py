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
    import http2
    import pipeline
    import render
    import stages
    import transactional
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
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        ).stdout.strip()
        or "uncommitted",
        "mode": "quick" if quick else "full",
        "command": "make bench" + (" ARGS=--quick" if quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.machine(),
        },
    }
    result["stages_us"] = _section("stages", stages.run(2_000 if quick else 10_000))
    result["render_us_per_field"] = _section("render", render.run())
    result["pipeline"] = _section("pipeline", asyncio.run(pipeline.run(5_000 if quick else 100_000)))
    with_callbacks = asyncio.run(pipeline.run(5_000 if quick else 50_000, callbacks=True))
    without = asyncio.run(pipeline.run(5_000 if quick else 50_000))  # beside it, in the same process
    result["callbacks"] = _section(
        "status callbacks, us per message (every event type written to the outbox)",
        {
            "without": without["pipeline_us_per_message"],
            "with": with_callbacks["pipeline_us_per_message"],
            "added": round(with_callbacks["pipeline_us_per_message"] - without["pipeline_us_per_message"], 2),
        },
    )
    result["webhook_end_to_end"] = _section(
        "webhook end to end", runner(webhook_e2e.run(10_000 if quick else 50_000, 1000))
    )
    result["channels"] = _section("channels", runner(channels.run(1_000 if quick else 10_000, None)))
    result["transactional"] = _section(
        "one-recipient jobs (beside them a plain push relay, and the floor: aiohttp answering 202)",
        runner(transactional.run(2_000 if quick else 20_000, 128)),
    )
    result["transactional_paced"] = _section(
        "one-recipient APNs jobs at 1,000 jobs/s",
        runner(transactional.run(2_000 if quick else 10_000, 128, ["apns"], 1000)),
    )
    result["http2"] = _section("HTTP/2 per APNs request, ours and h2", http2.run(5_000 if quick else 20_000))
    result["distributed"] = _section("distributed", runner(distributed.run(5_000 if quick else 20_000)))
    try:
        import apprise  # noqa: F401

        result["peer_apprise"] = _section(
            "apprise", asyncio.run(apprise_peer.run(300 if quick else 5_000, 300 if quick else 2_000))
        )
    except ImportError:
        print("apprise not installed (pip install -e '.[bench]'): peer comparison skipped")
    if not quick:  # the scale run: memory must stay flat while a million recipients go through. It
        # runs last: in the run at a5a0022 the channel runs that followed it measured 10-15%
        # below the same runs a few minutes later.
        result["scale"] = _section("scale", runner(webhook_e2e.run(1_000_000, 1000)))
    out = HERE / "results" / f"{result['date']}-{result['commit']}{'-quick' if quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")
    if not quick:
        refresh_readme(result, out.name)
        print("refreshed the latest-run table in benchmarks/README.md")


START, END = "<!-- latest-run:start -->", "<!-- latest-run:end -->"


def refresh_readme(result: dict[str, Any], source: str) -> None:
    """Rewrite the table between the markers in benchmarks/README.md from a full run."""
    readme = HERE / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{latest_table(result, source)}\n{END}{tail}")


def latest_table(r: dict[str, Any], source: str) -> str:
    m = r["machine"]
    rows = [
        f"`{r['command']}` on {r['date']} at {r['commit']} ({m['cpus']} cores, Python {m['python']}); "
        f"every figure is in `results/{source}`.",
        "",
        "| Figure | Value |",
        "|---|---|",
    ]

    def row(name: str, value: Any) -> None:
        rows.append(f"| {name} | {value} |")

    p, st, rd = r.get("pipeline", {}), r.get("stages_us", {}), r.get("render_us_per_field", {})
    if p:
        row(
            f"hot path, us per message ({p['recipients']:,} recipients, all stages)",
            f"{p['hot_path_total_us_per_message']}",
        )
        row(
            "decode us per message / `json.loads` of the same body",
            f"{p['decode_us_per_message']} / {p['json_loads_us_per_message']}",
        )
    if st:
        row(
            "personalize us per recipient (5 channels) / python-liquid",
            f"{st['personalize_us']} / {st['python_liquid_render_us']} ({st['personalize_vs_python_liquid']}x)",
        )
    if rd:
        row(
            "render us per field, 46 templates / python-liquid",
            f"{rd['mean_us_per_field']} / {rd['python_liquid_mean_us_per_field']} ({rd['ratio_of_means']}x)",
        )
        row(
            "render us per field, the shared examples / python-liquid",
            f"{rd['examples_mean_us_per_field']} / {rd['examples_python_liquid_mean_us']}",
        )
    e = r.get("webhook_end_to_end", {})
    if e:
        row(
            f"webhook end to end, 3 processes, {e['recipients']:,} recipients: accepted/s, delivered/s, peak RSS",
            f"{e['accepted_recipients_per_s']:,}, {e['delivered_per_s']:,}, {e['gateway_peak_rss_mb']} MB",
        )
    sc = r.get("scale", {})
    if sc:
        by = sc["gateway_rss_mb_by_progress"]
        row(
            f"scale: {sc['recipients']:,} recipients in jobs of 1,000: delivered/s, drained in, peak RSS, "
            "RSS at 10% / 50% / 100%",
            f"{sc['delivered_per_s']:,}, {sc['end_to_end_seconds']} s, {sc['gateway_peak_rss_mb']} MB, "
            f"{by.get('10%')} / {by.get('50%')} / {by.get('100%')} MB",
        )
    for c in r.get("channels", []):
        label = c["channel"] + (f" (encrypt_workers={c['encrypt_workers']})" if "encrypt_workers" in c else "")
        if c["channel"] == "mixed":
            label = f"all five channels at once, {c['messages']:,} messages"
        row(
            f"{label}: msg/s, CPU us per message gateway / fake, latency p50 / p99 ms",
            f"{c['messages_per_s']:,}, {c['gateway_cpu_us_per_message']} / {c['fake_cpu_us_per_message']}, "
            f"{c.get('latency_ms_p50', '-')} / {c.get('latency_ms_p99', '-')}",
        )
    for t in r.get("transactional", []) + r.get("transactional_paced", []):
        if "server_cpu_us_per_request" in t:
            row("the floor: aiohttp answering 202, CPU us per request", t["server_cpu_us_per_request"])
            continue
        if "apns_gateway_cpu_over_relay" in t:
            row("APNs: the gateway's CPU per message over the plain relay's", t["apns_gateway_cpu_over_relay"])
            continue
        cpu = t.get("gateway_cpu_us_per_message", t.get("relay_cpu_us_per_message"))
        paced = f" at {t['rate']:,.0f} jobs/s" if t.get("rate") else f", {t['concurrency']} in flight"
        row(
            f"one-recipient jobs, {t['channel']}{paced}: delivered/s, CPU us per message, p50 / p99 ms",
            f"{t['delivered_per_s']:,}, {cpu}, {t['latency_ms_p50']} / {t['latency_ms_p99']}",
        )
    h2 = r.get("http2", {})
    if h2:
        ours, ref = h2["ours"], h2.get("h2")
        row(
            "HTTP/2 alone per APNs request, CPU us, client / server: ours"
            + (" (h2, the reference; ratio)" if ref else ""),
            f"{ours['client_us_per_request']} / {ours['server_us_per_request']}"
            + (
                f" ({ref['client_us_per_request']} / {ref['server_us_per_request']}; "
                f"{h2['ratio_client']}x / {h2['ratio_server']}x)"
                if ref
                else ""
            ),
        )
    for d in r.get("distributed", {}).get("rows", []):
        trips = d.get("redis_round_trips_per_message")
        row(
            f"{d['store']} store, {d['gateways']} process(es): delivered/s"
            + (", Redis round trips per message" if trips is not None else ""),
            f"{d['delivered_per_s']:,}" + (f", {trips}" if trips is not None else ""),
        )
    a = r.get("peer_apprise", {})
    for kind in ("webhook", "email"):
        if kind in a:
            row(
                f"vs Apprise, {kind}: gateway msg/s, ratio to Apprise's best",
                f"{a[kind]['gateway_per_s']:,}, {a[kind]['ratio_vs_best_apprise']}x",
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
