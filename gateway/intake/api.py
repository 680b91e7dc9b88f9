"""The HTTP API (aiohttp): intake, job status, health, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from gateway import retention
from gateway.app import Gateway
from gateway.config import DEFAULT_TENANT, ApiKey, seconds
from gateway.intake import console
from gateway.intake.guard import GUARDS
from gateway.intake.openapi import openapi_spec
from gateway.intake.service import Intake
from gateway.intake.users import UserIndex
from gateway.intake.views import decode_cursor, encode_cursor, job_summary, job_view
from gateway.model.address import opt_out_key, tenant_key
from gateway.model.decision import OUTCOMES, decision_json
from gateway.model.instant import rfc3339
from gateway.pipeline import load_job
from gateway.preview import parse_instant
from gateway.store import DecisionQuery, JobQuery, JobRecord, StoreUnavailable

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
GATEWAY_KEY = web.AppKey("gateway", Gateway)
INTAKE_KEY = web.AppKey("intake", Intake)
KEYS_KEY = web.AppKey("api_keys", list)
USERS_KEY = web.AppKey("users", UserIndex)
TENANT_KEY = web.RequestKey("tenant", str)
ADMIN_KEY = web.RequestKey("admin", bool)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/console"})
# Recipients follow unsubscribe links: no API key. The console's files hold no data.
PUBLIC_PREFIXES = ("/v1/unsubscribe/", "/console/")
_VISIBLE_ASCII = re.compile(r"[!-~]+")
MAX_PAGE = 1000
MAX_JOBS_PAGE = 200  # jobs listed per page (each with its counts)
JOB_STATES = ("accepted", "running", "waiting", "completed", "cancelled")
DECIDED = ("completed", "waiting", "cancelled")  # job states once every recipient has a decision
WAIT_PATTERN = r"[0-9]{1,6}(?:\.[0-9]{1,3})?(?:ms|s)"  # ?wait=
_DURATION = re.compile(WAIT_PATTERN)


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    payload = body if isinstance(body, bytes) else _json.encode(body)
    return web.Response(status=status, body=payload, content_type="application/json", headers=headers)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, {"error": code, "message": message}, headers)


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request, in order: a path that is UTF-8, a loopback-only check without API
    keys, the API key, then the handler, whose store outages are 503s. (One middleware:
    each of aiohttp's costs a few microseconds per request.)

    Every answer is JSON, aiohttp's own 404, 405 and 413 included, and no input makes a
    5xx: anything unexpected is logged with its trace and answered 500 as JSON (a bug: the
    hostile-input tests assert it never happens)."""
    try:
        request.path.encode()
    except UnicodeEncodeError:  # %-escapes that are not UTF-8
        return error(400, "invalid_path", "the path is not valid UTF-8")
    guard = GUARDS.get(id(request.transport))
    if guard is not None:
        guard.request_started()  # its body is the handler's to time, not the header clock's
    try:
        refused = _refuse_remote(request) or _authenticate(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except StoreUnavailable as exc:  # the caller retries, never a 500
            return json_response(*store_unavailable(request.app[GATEWAY_KEY], exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error(exc.status, _CODES.get(exc.status, "error"), exc.reason, headers)
    except Exception:
        return json_response(*internal_error(request.method, request.path))
    finally:
        if guard is not None:
            guard.request_finished()


Answer = tuple[int, object, dict[str, str] | None]  # status, JSON body (or its bytes), headers


BODY_TIMEOUT: Answer = (408, {"error": "request_timeout", "message": "the body did not arrive in time"}, None)


def store_unavailable(gw: Gateway, exc: StoreUnavailable) -> Answer:
    log.warning("store unavailable: %s", exc)
    retry_after = {"Retry-After": str(gw.config.intake.retry_after)}
    return 503, {"error": "store_unavailable", "message": "the store is unreachable; retry later"}, retry_after


def internal_error(method: str, path: str) -> Answer:
    log.exception("unexpected error answering %s %s", method, path)
    message = "the gateway failed to answer this request; the log has the trace"
    return 500, {"error": "internal_error", "message": message}, None


_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}
_LOOPBACK_HOST = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?$", re.I)


def _refuse_remote(request: web.Request) -> web.Response | None:
    """Without API keys the gateway listens on loopback, where a web page in the operator's
    browser could still reach it: a request naming another host (DNS rebinding) is refused,
    and a state-changing one must be `application/json`, which a cross-site form or a
    simple fetch cannot send without a CORS preflight this server never grants."""
    if request.app[KEYS_KEY]:
        return None
    if not _LOOPBACK_HOST.match(request.headers.get("Host", "")):
        return error(403, "forbidden", "without API keys only requests to a loopback Host are served")
    changes_state = request.method not in ("GET", "HEAD", "OPTIONS") and not request.path.startswith(PUBLIC_PREFIXES)
    if changes_state and request.content_type != "application/json":
        return error(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    return None


def _authenticate(request: web.Request) -> web.Response | None:
    """The request's tenant (and whether its key is an admin's), or the 401 to answer."""
    keys: list[ApiKey] = request.app[KEYS_KEY]
    # No keys: allowed on loopback only (server.keys_for), where the caller sees everything.
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES) or not keys:
        request[TENANT_KEY], request[ADMIN_KEY] = DEFAULT_TENANT, not keys
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="gateway"'}
    if scheme.lower() != "bearer" or not token:
        return error(401, "unauthorized", "missing `Authorization: Bearer <api key>` header", challenge)
    key = key_for(keys, token)
    if key is None:
        return error(401, "unauthorized", "unknown API key", challenge)
    request[TENANT_KEY], request[ADMIN_KEY] = key.tenant, key.admin
    return None


def key_for(keys: list[ApiKey], token: str) -> ApiKey | None:
    """The API key `token` is, if any."""
    if not _VISIBLE_ASCII.fullmatch(token):  # keys are visible ASCII; anything else is no key of ours
        return None
    # Compare against every key so the time taken does not reveal which prefix matched.
    matched = [hmac.compare_digest(token.encode(), k.secret.reveal().encode()) for k in keys]
    return keys[matched.index(True)] if any(matched) else None


def visible(request: web.Request, record: JobRecord | None) -> bool:
    """Another tenant's job is not found (404), as if it did not exist; admins see all."""
    return record is not None and (request[ADMIN_KEY] or record.tenant == request[TENANT_KEY])


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
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _VISIBLE_ASCII.fullmatch(key):
        return error(400, "invalid_idempotency_key", "Idempotency-Key must be visible ASCII characters")
    wait = _wait_query(request)
    if isinstance(wait, web.Response):
        return wait
    body = await read_body(request)
    if isinstance(body, web.Response):
        gw.metrics.jobs_rejected.inc(str(body.status))
        return body
    return json_response(*await submit_job(gw, request.app[INTAKE_KEY], body, request[TENANT_KEY], key, wait))


async def submit_job(gw: Gateway, intake: Intake, body: bytes, tenant: str, key: str | None, wait: float) -> Answer:
    """A job's body through intake, and with `wait`, its decisions if they come in time
    (the aiohttp handler and the plain-request path of fastpath.py both answer with it)."""
    reply = await intake.submit(body, tenant, key)
    if wait and reply.status == 202 and reply.job_id is not None:
        view = await _job_when_decided(gw, reply.job_id, wait)
        if view is not None:
            return 200, view, {"Location": f"/v1/jobs/{reply.job_id}"}
    return reply.status, reply.body, reply.headers


def _wait_query(request: web.Request) -> float | web.Response:
    """`?wait=2s`: how long to hold the answer for the job's decisions (0: not at all),
    cut to `intake.max_wait`."""
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    if not _DURATION.fullmatch(raw):
        return json_response(
            400,
            {"error": "invalid_query", "path": "wait", "message": "wait must be a duration such as 500ms or 2s"},
        )
    return wait_seconds(request.app[GATEWAY_KEY], raw)


def wait_seconds(gw: Gateway, raw: str) -> float:
    return min(seconds(raw), seconds(gw.config.intake.max_wait))


async def _job_when_decided(gw: Gateway, job_id: str, wait: float) -> dict[str, object] | None:
    """The job's view once every recipient has a decision (`completed`, or `waiting` on
    deferred messages), or None when that takes longer than `wait`: the job goes on."""
    runner = gw.runner
    if runner is not None and runner.has(job_id):  # this process runs it: no polling
        try:
            await asyncio.wait_for(asyncio.shield(runner.watch(job_id)), wait)
        except TimeoutError:
            return None
        record = await gw.store.get_job(job_id)
    else:  # a shared queue: whichever process takes it records it in the store
        deadline = asyncio.get_running_loop().time() + wait
        while (record := await gw.store.get_job(job_id)) is not None and record.state not in DECIDED:
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.05)
    if record is None or record.state not in DECIDED:  # stopped with the process: it resumes later
        return None
    return await job_view(gw.store, record, 0, 100)


async def read_body(request: web.Request) -> bytes | web.Response:
    """The body, or the error to answer: over the size limit (413), or not received within
    `server.body_timeout` (408: a client trickling a body holds nothing for long)."""
    gw = request.app[GATEWAY_KEY]
    limit = gw.config.limits.max_body_bytes
    try:
        if request.content.is_eof():  # it all came with the head: nothing to wait for
            return await request.read()
        async with asyncio.timeout(seconds(gw.config.server.body_timeout)):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_response(413, {"error": "too_large", "path": "$", "message": f"body exceeds {limit} bytes"})
    except TimeoutError:
        return json_response(*BODY_TIMEOUT)


async def post_preview(request: web.Request) -> web.Response:
    from gateway.intake.validate import JobError, accept_job
    from gateway.preview import OverRenderLimit, parse_instant, preview

    gw = request.app[GATEWAY_KEY]
    now = gw.clock.now()
    if "now" in request.query:
        try:
            now = parse_instant(request.query["now"])
        except ValueError as exc:
            return error(400, "invalid_query", f"now: {exc}")
    body = await read_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        accepted = accept_job(body, gw.config.limits, gw.channels, gw.subscription_groups)
    except JobError as exc:
        return json_response(exc.status, exc.body())
    try:
        result = await preview(
            accepted,
            gw.channels,
            gw.policy,
            now,
            gw.store.check_caps,
            request[TENANT_KEY],
            gw.config.pipeline.batch_size,
        )
    except OverRenderLimit as exc:
        return json_response(400, {"error": "render_limit", "path": exc.path, "message": exc.message})
    return json_response(200, result)


def _unsubscriber(gw: Gateway, token: str) -> tuple[str, ...] | None:
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
    address, campaign, tenant = (*found, DEFAULT_TENANT)[:3]
    key = tenant_key(tenant, opt_out_key(address))
    now = gw.clock.now()
    await gw.store.record_opt_out(key, campaign, now)
    if (outbox := gw.pipeline.subscriptions.opt_out(tenant, opt_out_key(address), campaign, now)) is not None:
        await gw.store.append_outbox(outbox)
    gw.policy.opt_outs.add(key)
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
    key = tenant_key(request[TENANT_KEY], opt_out_key(request.match_info["address"]))
    existed = await gw.store.clear_opt_out(key)
    gw.policy.opt_outs.discard(key)
    return web.Response(status=204 if existed else 404)


async def cancel_job(request: web.Request) -> web.Response:
    """`POST /v1/jobs/{id}/cancel`: no further batch starts, messages waiting in the schedule
    are `suppressed: cancelled`; the job ends `cancelled`. Again: the same answer. A job that
    has completed: 409."""
    gw = request.app[GATEWAY_KEY]
    job_id = request.match_info["job_id"]
    record = await gw.store.get_job(job_id)
    if record is None or not visible(request, record):
        return error(404, "not_found", f"no job {job_id}")
    if record.state == "completed":
        return error(409, "job_completed", f"job {job_id} has completed: there is nothing left to cancel")
    record = await gw.store.cancel_job(job_id, gw.clock.now())
    if record is None or record.state == "completed":  # it completed meanwhile
        return error(409, "job_completed", f"job {job_id} has completed: there is nothing left to cancel")
    gw.pipeline.cancelled.add(job_id)  # a worker here stops at its next batch
    if record.state == "waiting":  # every recipient decided: only its schedule is left
        await gw.pipeline.cancel_deferred(await load_job(gw.store, job_id, record.recipients, 0.0, record))
    log.info(
        "job %s: cancel asked for (it was %s)", job_id, record.state, extra={"event": "job.cancel", "job_id": job_id}
    )
    record = await gw.store.get_job(job_id)
    assert record is not None
    return json_response(200, job_summary(record, await gw.store.outcome_counts(job_id)))


async def find_decisions(request: web.Request) -> web.Response:
    """`GET /v1/jobs/{id}/decisions?outcome=&channel=&user_id=&limit=&cursor=`: the job's
    decisions that match, in recipient then channel order, a page at a time."""
    gw = request.app[GATEWAY_KEY]
    job_id = request.match_info["job_id"]
    record = await gw.store.get_job(job_id)
    if record is None or not visible(request, record):
        return error(404, "not_found", f"no job {job_id}")
    q = request.query
    limit = _limit(request, 100, MAX_PAGE)
    if isinstance(limit, web.Response):
        return limit
    problem = _one_of(request, "outcome", OUTCOMES)
    after = _cursor(request, tuple[int, int])
    if problem is not None or isinstance(after, web.Response):
        return problem or after
    recipients = None
    if "user_id" in q:
        recipients = await request.app[USERS_KEY].recipients(gw.store, job_id, q["user_id"])
        if not recipients:
            return json_response(200, {"decisions": [], "next_cursor": None})
    query = DecisionQuery(
        outcome=q.get("outcome"), channel=q.get("channel"), recipients=recipients, limit=limit, after=after
    )
    found, last = await gw.store.find_decisions(job_id, query)
    return json_response(
        200,
        {"decisions": [decision_json(d) for d in found], "next_cursor": encode_cursor(last) if last else None},
    )


async def opt_out_feed(request: web.Request) -> web.Response:
    """`GET /v1/opt-outs?cursor=&limit=`: the tenant's one-click opt-outs, oldest first, for
    a CRM to sync without callbacks."""
    gw = request.app[GATEWAY_KEY]
    limit = _limit(request, 100, MAX_PAGE)
    after = _cursor(request, tuple[float, str])
    if isinstance(limit, web.Response) or isinstance(after, web.Response):
        return limit if isinstance(limit, web.Response) else after
    found, last = await gw.store.opt_out_feed(request[TENANT_KEY], after, limit)
    entries = [{"address": o.address, "campaign": o.campaign, "at": rfc3339(o.at)} for o in found]
    return json_response(200, {"opt_outs": entries, "next_cursor": encode_cursor(last) if last else None})


async def invalid_token_feed(request: web.Request) -> web.Response:
    """`GET /v1/invalid-tokens?cursor=&limit=`: device tokens and subscriptions the tenant's
    jobs found dead, oldest first: upstream deletes them."""
    gw = request.app[GATEWAY_KEY]
    limit = _limit(request, 100, MAX_PAGE)
    after = _cursor(request, str)
    if isinstance(limit, web.Response) or isinstance(after, web.Response):
        return limit if isinstance(limit, web.Response) else after
    found, last = await gw.store.invalid_token_feed(request[TENANT_KEY], after, limit)
    entries = [{**msgspec.to_builtins(t), "at": rfc3339(t.at)} for t in found]
    return json_response(200, {"invalid_tokens": entries, "next_cursor": encode_cursor(last) if last else None})


async def erase_user(request: web.Request) -> web.Response:
    """`DELETE /v1/users/{user_id}`: the user's profile data is erased from the stored body of
    every job of the tenant (an admin key: of every tenant), finished or not."""
    gw = request.app[GATEWAY_KEY]
    user_id = request.match_info["user_id"]
    changed = await retention.erase_user(gw.store, None if request[ADMIN_KEY] else request[TENANT_KEY], user_id)
    if gw.scheduler is not None:
        gw.scheduler.forget(changed)  # released messages are planned from the erased body
    return json_response(200, {"user_id": user_id, "jobs": len(changed)})


async def list_jobs(request: web.Request) -> web.Response:
    """`GET /v1/jobs?campaign=&state=&created_after=&limit=&cursor=`: the tenant's jobs,
    newest first (an admin's: every tenant's, or `?tenant=`)."""
    gw = request.app[GATEWAY_KEY]
    query = _job_query(request)
    if isinstance(query, web.Response):
        return query
    records, last = await gw.store.list_jobs(query)
    counts = await asyncio.gather(*(gw.store.outcome_counts(r.id) for r in records))
    return json_response(
        200,
        {
            "jobs": [job_summary(r, c) for r, c in zip(records, counts, strict=True)],
            "next_cursor": encode_cursor(last) if last is not None else None,
        },
    )


def _job_query(request: web.Request) -> JobQuery | web.Response:
    q = request.query
    limit = _limit(request, 50, MAX_JOBS_PAGE)
    if isinstance(limit, web.Response):
        return limit
    if (problem := _one_of(request, "state", JOB_STATES)) is not None:
        return problem
    created_after = None
    if "created_after" in q:
        try:
            created_after = parse_instant(q["created_after"])
        except ValueError as exc:
            return _bad_query("created_after", f"created_after: {exc}")
    before = _cursor(request, tuple[float, str])
    if isinstance(before, web.Response):
        return before
    tenant = q.get("tenant") if request[ADMIN_KEY] else request[TENANT_KEY]
    return JobQuery(
        tenant=tenant, campaign=q.get("campaign"), state=q.get("state"), created_after=created_after,
        limit=limit, before=before,
    )  # fmt: skip


def _limit(request: web.Request, default: int, maximum: int) -> int | web.Response:
    limit = _int_query(request, "limit", default)
    if limit is None or not 1 <= limit <= maximum:
        return _bad_query("limit", f"limit must be an integer between 1 and {maximum}")
    return limit


def _one_of(request: web.Request, name: str, allowed: tuple[str, ...]) -> web.Response | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        return _bad_query(name, f"{name} must be one of {', '.join(allowed)}")
    return None


def _cursor(request: web.Request, kind: Any) -> Any:
    """The position `cursor=` holds (None without one), or the 400 to answer."""
    if "cursor" not in request.query:
        return None
    position = decode_cursor(request.query["cursor"], kind)
    return position if position is not None else _bad_query("cursor", "not a cursor this API gave")


def _bad_query(name: str, message: str) -> web.Response:
    return json_response(400, {"error": "invalid_query", "path": name, "message": message})


async def get_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    job_id = request.match_info["job_id"]
    offset = _int_query(request, "offset", 0)
    limit = _int_query(request, "limit", 100)
    if offset is None or limit is None or offset < 0 or not 1 <= limit <= MAX_PAGE:
        return error(400, "invalid_query", f"offset must be an integer >= 0 and limit one between 1 and {MAX_PAGE}")
    record = await gw.store.get_job(job_id)
    if record is None or not visible(request, record):
        return error(404, "not_found", f"no job {job_id}")
    return json_response(200, await job_view(gw.store, record, offset, limit))


def _int_query(request: web.Request, name: str, default: int) -> int | None:
    """A query parameter as a small decimal integer (None when it is not one)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """`ready`, `degraded` (a channel's provider failing or its circuit open: jobs are still
    taken, and its deliveries wait in the store) or `not_ready` (503: the store is down, or
    the gateway is starting or stopping); each channel's state beside it."""
    gw = request.app[GATEWAY_KEY]
    store_ok = await gw.store.ping()
    states = gw.pipeline.dispatcher.states() if gw.runner is not None else {}
    channels = {name: channel_health(states.get(name, {})) for name in sorted(gw.channels)}
    ready = store_ok and gw.ready
    status = "not_ready" if not ready else "ready" if all(c["state"] == "up" for c in channels.values()) else "degraded"
    body = {"status": status, "store": store_ok, "accepting": gw.accepting, "channels": channels}
    return json_response(200 if ready else 503, body)


def channel_health(providers: dict[str, str]) -> dict[str, object]:
    """`up`; `degraded` when a provider fails or has its circuit open while others work;
    `open` when every provider it has used has its circuit open."""
    if all(state == "up" for state in providers.values()):
        return {"state": "up"}
    states = set(providers.values())
    return {"state": "open" if states == {"open"} else "degraded", "providers": providers}


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    try:  # the deferred backlog lives in the store: read at scrape time
        counts = await gw.store.deferred_counts()
        gw.metrics.deferred_by_reason = {(reason,): n for reason, n in counts.items()}
    except StoreUnavailable:
        pass  # the last reading stands; /readyz says the store is down
    text = gw.metrics.render()
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )


async def console_summary(request: web.Request) -> web.Response:
    tenant = None if request[ADMIN_KEY] else request[TENANT_KEY]
    return json_response(200, await console.summary(request.app[GATEWAY_KEY], tenant))


async def openapi(request: web.Request) -> web.Response:
    return json_response(200, openapi_spec())


ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("POST", "/v1/jobs", post_job),
    ("GET", "/v1/jobs", list_jobs),
    ("GET", "/v1/jobs/{job_id}", get_job),
    ("POST", "/v1/jobs/{job_id}/cancel", cancel_job),
    ("GET", "/v1/jobs/{job_id}/decisions", find_decisions),
    ("POST", "/v1/preview", post_preview),
    ("POST", "/v1/unsubscribe/{token}", post_unsubscribe),
    ("GET", "/v1/unsubscribe/{token}", get_unsubscribe),
    ("DELETE", "/v1/opt-outs/{address}", delete_opt_out),
    ("GET", "/v1/opt-outs", opt_out_feed),
    ("GET", "/v1/invalid-tokens", invalid_token_feed),
    ("DELETE", "/v1/users/{user_id}", erase_user),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    ("GET", "/v1/console/summary", console_summary),
    ("GET", "/console", console.page),
    ("GET", "/console/{name}", console.asset),
]


async def expect(request: web.Request) -> web.Response | None:
    """`Expect: 100-continue`, and a JSON 417 for anything else. aiohttp's own handler runs
    before any middleware and answered 500 to an Expect value that is not UTF-8."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    return error(417, "expectation_failed", "the only Expect this server meets is 100-continue")


def _no_such_route(known: list[tuple[re.Pattern[str], str]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        allowed = sorted({method for pattern, method in known if pattern.fullmatch(request.path)})
        if allowed:
            return error(
                405, "method_not_allowed", f"{request.method} is not allowed here", {"Allow": ", ".join(allowed)}
            )
        return error(404, "not_found", "no such path")

    return handler


def make_app(gateway: Gateway, api_keys: list[ApiKey]) -> web.Application:
    # One byte over the limit so aiohttp's own check fires only past it; our handler gives
    # the JSON error naming the limit.
    app = web.Application(
        client_max_size=gateway.config.limits.max_body_bytes + 1,
        middlewares=[api_middleware],
    )
    app[GATEWAY_KEY] = gateway
    app[INTAKE_KEY] = Intake(gateway)
    app[KEYS_KEY] = api_keys
    app[USERS_KEY] = UserIndex()
    known = []
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler, expect_handler=expect)
        known.append((re.compile(re.sub(r"\{\w+\}", "[^/]+", path)), method))
    # Every other path and method is ours too (JSON 404 and 405, and our Expect handling).
    app.router.add_route("*", "/{tail:.*}", _no_such_route(known), expect_handler=expect)
    return app
