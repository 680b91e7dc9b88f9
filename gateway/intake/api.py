"""The HTTP API (aiohttp): intake, job status, health, metrics, OpenAPI."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from gateway.app import Gateway
from gateway.config import Secret
from gateway.intake.openapi import openapi_spec
from gateway.intake.service import Intake
from gateway.model.decision import OUTCOMES
from gateway.store import StoreUnavailable

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
GATEWAY_KEY = web.AppKey("gateway", Gateway)
INTAKE_KEY = web.AppKey("intake", Intake)
KEYS_KEY = web.AppKey("api_keys", list)
SCOPE_KEY = web.RequestKey("key_scope", str)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
PUBLIC_PREFIXES = ("/v1/unsubscribe/",)  # recipients follow these links: no API key
MAX_PAGE = 1000


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    payload = body if isinstance(body, bytes) else _json.encode(body)
    return web.Response(status=status, body=payload, content_type="application/json", headers=headers)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, {"error": code, "message": message}, headers)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    keys: list[Secret] = request.app[KEYS_KEY]
    # No keys: allowed on loopback only (server.keys_for).
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES) or not keys:
        request[SCOPE_KEY] = "local"
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="gateway"'}
    if scheme.lower() != "bearer" or not token:
        return error(401, "unauthorized", "missing `Authorization: Bearer <api key>` header", challenge)
    # Compare against every key so the time taken does not reveal which prefix matched.
    matched = [hmac.compare_digest(token.encode(), k.reveal().encode()) for k in keys]
    if not any(matched):
        return error(401, "unauthorized", "unknown API key", challenge)
    request[SCOPE_KEY] = hashlib.sha256(token.encode()).hexdigest()[:16]
    return await handler(request)


@web.middleware
async def store_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The store being unreachable is a 503 the caller retries, never a 500."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        log.warning("store unavailable: %s", exc)
        gw = request.app[GATEWAY_KEY]
        return error(
            503,
            "store_unavailable",
            "the store is unreachable; retry later",
            {"Retry-After": str(gw.config.intake.retry_after)},
        )


async def post_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    limit = gw.config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        gw.metrics.jobs_rejected.inc("413")
        return json_response(
            413,
            {
                "error": "too_large",
                "path": "$",
                "message": f"body is {request.content_length} bytes, the limit is {limit}",
            },
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        gw.metrics.jobs_rejected.inc("413")
        return json_response(413, {"error": "too_large", "path": "$", "message": f"body exceeds {limit} bytes"})
    reply = await request.app[INTAKE_KEY].submit(body, request[SCOPE_KEY], request.headers.get("Idempotency-Key"))
    return json_response(reply.status, reply.body, reply.headers)


async def post_preview(request: web.Request) -> web.Response:
    from gateway.intake.validate import JobError, accept_job
    from gateway.preview import parse_instant, preview

    gw = request.app[GATEWAY_KEY]
    now = gw.clock.now()
    if "now" in request.query:
        try:
            now = parse_instant(request.query["now"])
        except ValueError as exc:
            return error(400, "invalid_query", f"now: {exc}")
    limit = gw.config.limits.max_body_bytes
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_response(413, {"error": "too_large", "path": "$", "message": f"body exceeds {limit} bytes"})
    try:
        accepted = accept_job(body, gw.config.limits, gw.channels)
    except JobError as exc:
        return json_response(exc.status, exc.body())
    return json_response(200, preview(accepted, gw.channels, gw.policy, now))


def _unsubscriber(gw: Gateway, token: str) -> tuple[str, str] | None:
    for channel in gw.channels.values():
        found = channel.read_unsubscribe_token(token)
        if found is not None:
            return found
    return None


async def post_unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click: the mailbox provider POSTs List-Unsubscribe=One-Click."""
    gw = request.app[GATEWAY_KEY]
    found = _unsubscriber(gw, request.match_info["token"])
    if found is None:
        return error(404, "not_found", "unknown unsubscribe link")
    address, campaign = found
    await gw.store.record_opt_out(address, campaign, gw.clock.now())
    gw.policy.opt_outs.add(address.lower())
    log.info("one-click unsubscribe recorded (campaign %s)", campaign)
    return web.Response(text="You are unsubscribed.", content_type="text/plain")


async def get_unsubscribe(request: web.Request) -> web.Response:
    """A page with a button, never an unsubscribe on GET: link scanners follow links."""
    if _unsubscriber(request.app[GATEWAY_KEY], request.match_info["token"]) is None:
        return error(404, "not_found", "unknown unsubscribe link")
    page = (
        '<!doctype html><title>Unsubscribe</title><form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return web.Response(text=page, content_type="text/html")


async def delete_opt_out(request: web.Request) -> web.Response:
    """Upstream has a new subscription state for the address: stop suppressing it."""
    gw = request.app[GATEWAY_KEY]
    address = request.match_info["address"]
    existed = await gw.store.clear_opt_out(address)
    gw.policy.opt_outs.discard(address.lower())
    return web.Response(status=204 if existed else 404)


async def get_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    job_id = request.match_info["job_id"]
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return error(400, "invalid_query", "offset and limit must be integers")
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        return error(400, "invalid_query", f"offset must be >= 0 and limit between 1 and {MAX_PAGE}")
    record = await gw.store.get_job(job_id)
    if record is None:
        return error(404, "not_found", f"no job {job_id}")
    counts = await gw.store.outcome_counts(job_id)
    decisions = await gw.store.decisions(job_id, offset, limit)
    body = {
        "job_id": record.id,
        "campaign": record.campaign,
        "state": record.state,
        "recipients": record.recipients,
        "recipients_done": record.cursor,
        "warnings": record.warnings,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
        "decisions": decisions,
        "offset": offset,
        "next_offset": offset + limit if len(decisions) == limit else None,
    }
    return json_response(200, body)


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    store_ok = await gw.store.ping()
    checks = {"store": store_ok, "channels": sorted(gw.channels), "accepting": gw.accepting}
    ready = store_ok and gw.ready
    return json_response(200 if ready else 503, {"status": "ready" if ready else "not_ready", **checks})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[GATEWAY_KEY].metrics.render()
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )


async def openapi(request: web.Request) -> web.Response:
    return json_response(200, openapi_spec())


def make_app(gateway: Gateway, api_keys: list[Secret]) -> web.Application:
    # One byte over the limit so aiohttp's own check fires only past it; our handler gives
    # the JSON error naming the limit.
    app = web.Application(
        client_max_size=gateway.config.limits.max_body_bytes + 1, middlewares=[auth_middleware, store_errors_middleware]
    )
    app[GATEWAY_KEY] = gateway
    app[INTAKE_KEY] = Intake(gateway)
    app[KEYS_KEY] = api_keys
    app.router.add_post("/v1/jobs", post_job)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_post("/v1/preview", post_preview)
    app.router.add_post("/v1/unsubscribe/{token}", post_unsubscribe)
    app.router.add_get("/v1/unsubscribe/{token}", get_unsubscribe)
    app.router.add_delete("/v1/opt-outs/{address}", delete_opt_out)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app
