"""`/console`: a read-only operator page served by the gateway, and the one JSON summary it
polls. The page ships in the package (`gateway/console/`: HTML, CSS, JS; no build step, no
CDN) and is public: it holds no data. What it shows comes from `/v1/console/summary` and
`/v1/jobs/{id}`, with the same API keys as the rest of `/v1`."""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from gateway.app import Gateway
from gateway.intake.views import job_summary
from gateway.store import JobQuery

RECENT = 25
_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
# The page loads its own files only; fetches go to this origin.
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:"


def _asset(name: str) -> bytes:
    return resources.files("gateway.console").joinpath(name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_asset("console.html"), content_type="text/html", headers=_headers())


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _FILES:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=_FILES[name], headers=_headers())


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


async def summary(gw: Gateway, tenant: str | None) -> dict[str, object]:
    """Recent jobs (the tenant's; None: every tenant's) with their counts, channel health,
    the deferred backlog, the last hour."""
    from gateway.intake.api import channel_health

    records, _ = await gw.store.list_jobs(JobQuery(tenant=tenant, limit=RECENT))
    counts = await asyncio.gather(*(gw.store.outcome_counts(r.id) for r in records))
    states = gw.pipeline.dispatcher.states() if gw.runner is not None else {}
    channels = {name: channel_health(states.get(name, {})) for name in sorted(gw.channels)}
    return {
        "status": "ready" if all(c["state"] == "up" for c in channels.values()) else "degraded",
        "jobs": [job_summary(r, c) for r, c in zip(records, counts, strict=True)],
        "channels": channels,
        "deferred": await gw.store.deferred_counts(),
        "history": gw.metrics.history.series(),
    }
