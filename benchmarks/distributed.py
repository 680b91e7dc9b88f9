"""One and two gateway processes on Redis, beside one on the embedded store.

The `webhook_e2e.py` workload (signed speaker webhooks to the receiver of
`gateway.testing`, jobs posted over HTTP, to the gateways in turn) for:
- 1 process, embedded store (SQLite, synchronous=full);
- 1 process, Redis;
- 2 processes, Redis (any process takes any job from the intake stream).
Redis is a redis-server of its own, durable as `docs/deployment.md` asks (append-only
file, fsync every second). Round trips per message are Redis's `total_reads_processed`
(one per request read from a client, however many commands a script runs) over the
run, divided by the deliveries; commands per message count every command, including
those run inside scripts.

Everything shares this machine's cores: the gateways, the receiver, the driver and
redis-server, so a second process adds CPU demand to the same cores.

    .venv/bin/python benchmarks/distributed.py [--recipients 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import webhook_e2e  # noqa: E402

from gateway.testing.redis_server import RedisServer  # noqa: E402


def _redis_stats(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("stats")
        return {"reads": int(info["total_reads_processed"]), "commands": int(info["total_commands_processed"])}
    finally:
        client.close()


def _figures(result: dict[str, Any], before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, Any]:
    out = {
        k: result[k]
        for k in (
            "store",
            "gateways",
            "recipients",
            "delivered",
            "accepted_recipients_per_s",
            "delivered_per_s",
            "end_to_end_seconds",
            "gateway_peak_rss_mb",
        )
    }
    if before is not None and after is not None and result["delivered"]:
        out["redis_round_trips_per_message"] = round((after["reads"] - before["reads"]) / result["delivered"], 3)
        out["redis_commands_per_message"] = round((after["commands"] - before["commands"]) / result["delivered"], 2)
    return out


async def run(total: int, per_job: int = 1000) -> dict[str, Any]:
    rows = [_figures(await webhook_e2e.run(total, per_job), None, None)]
    if RedisServer.binary() is None:
        return {"rows": rows, "note": "redis-server is not installed: Redis rows skipped"}
    for gateways in (1, 2):
        with RedisServer(appendonly=True) as url:
            before = _redis_stats(url)
            result = await webhook_e2e.run(total, per_job, gateways=gateways, redis_url=url)
            rows.append(_figures(result, before, _redis_stats(url)))
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--per-job", type=int, default=1000)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args.recipients, args.per_job))
    except ImportError:
        result = asyncio.run(run(args.recipients, args.per_job))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
