"""Accepting a send job: idempotency, validation, admission, durable store, then queue.

HTTP-free so the CLI, tests and the HTTP handler share one path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.app import Gateway
from gateway.config import seconds
from gateway.intake.validate import JobError, accept_job
from gateway.pipeline import RunningJob
from gateway.store import IdempotencyRecord, JobRecord, StoreBusy

_json = msgspec.json.Encoder()
_sorted = msgspec.json.Encoder(order="sorted")


class _Accepted(msgspec.Struct):
    job_id: str | None = None


_replayed = msgspec.json.Decoder(_Accepted)


class _JobIds:
    """Job ids: 32 hex digits, the milliseconds since 1970 (48 bits) then 80 random bits, so
    unguessable and time-ordered, like a UUIDv7. Ordered because every table keyed by job
    (the jobs' primary key, decision rows and counts) then grows at its right edge: with
    random ids each job dirtied a leaf page of its own in each of them, and a group commit
    of 30 one-recipient jobs wrote ~90 pages (bare SQLite, 60,000 jobs: 85-93 us of CPU a
    job with random ids, 38-40 with ordered ones). The randomness is read 4 KiB at a time
    (one system call per 409 jobs)."""

    def __init__(self) -> None:
        self._pool, self._at = b"", 0

    def next(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(4090), 0
        self._at += 10
        millis = int(time.time() * 1000) & 0xFFFF_FFFF_FFFF
        return f"{millis:012x}{self._pool[self._at - 10 : self._at].hex()}"


_job_ids = _JobIds()
log = logging.getLogger(__name__)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    job_id: str | None = None  # the job accepted (or replayed)


class Intake:
    def __init__(self, gateway: Gateway):
        self.gw = gateway
        # Same key in flight twice in this process: the second waits for the first's answer.
        self._inflight_keys: dict[str, asyncio.Future[None]] = {}
        self._max_queue_age = seconds(gateway.config.intake.max_queue_age)

    async def submit(self, body: bytes, tenant: str, idempotency_key: str | None) -> Reply:
        if not self.gw.accepting:
            return _error(503, "shutting_down", "the gateway is not accepting jobs", retry_after=5)
        if idempotency_key is None:
            return await self._accept(body, tenant, None)
        if len(idempotency_key) > 255:
            return _error(400, "invalid_idempotency_key", "Idempotency-Key is longer than 255 characters")
        key = f"{tenant}:{idempotency_key}"  # a tenant's keys are its own
        body_hash = meaning_hash(body)  # before the key is claimed: nothing may leave it claimed
        while (pending := self._inflight_keys.get(key)) is not None:
            await asyncio.shield(pending)
        # Claim the key with no await between the check above and this line.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight_keys[key] = done
        try:
            existing = await self.gw.store.get_idempotency(key, self.gw.clock.now())
            if existing is not None:
                if existing.body_hash != body_hash:
                    return await self._conflict(existing, body)
                return _replay(existing)
            return await self._accept(body, tenant, (key, body_hash))
        finally:
            del self._inflight_keys[key]
            done.set_result(None)

    async def _conflict(self, existing: IdempotencyRecord, body: bytes) -> Reply:
        """409, naming where this body's job differs from the one the key was first used for."""
        job_id = _replayed.decode(existing.response).job_id if existing.status == 202 else None
        where = ""
        if job_id is not None:
            try:
                found = differences(
                    msgspec.json.decode(await self.gw.store.job_body(job_id)), msgspec.json.decode(body)
                )
                where = f"; it differs at {', '.join(found)}" if found else ""
            except (msgspec.DecodeError, KeyError, LookupError, RecursionError):
                pass  # the first job's body is gone (retention): the message stays general
        return _error(
            409,
            "idempotency_key_reused",
            f"this Idempotency-Key was used with a different job{where}; use a new key for a new job",
        )

    def _backlog(self) -> str | None:
        """Why a new job would wait too long behind those already queued, if it would."""
        assert self.gw.runner is not None
        intake = self.gw.config.intake
        jobs, age = self.gw.runner.backlog()
        if jobs >= intake.max_queued_jobs:
            return f"{jobs} jobs are waiting for a worker (limit {intake.max_queued_jobs}); retry later"
        if age > self._max_queue_age:
            return f"the oldest queued job has waited {age:.1f}s (limit {intake.max_queue_age}); retry later"
        return None

    async def _accept(self, body: bytes, tenant: str, idempotency: tuple[str, str] | None) -> Reply:
        gw = self.gw
        try:
            accepted = accept_job(body, gw.config.limits, gw.channels, gw.subscription_groups)
        except JobError as exc:
            gw.metrics.jobs_rejected.inc(str(exc.status))
            return Reply(exc.status, _json.encode(exc.body()), {})
        job = accepted.job
        n = len(job.recipients)
        # A shared queue bounds what waits in the store (StoreBusy below), and each process
        # its own in-flight recipients when it takes jobs; otherwise this process runs the
        # job, and admits it here.
        held = 0 if gw.store.shared_queue else n
        if held and (backlog := self._backlog()) is not None:
            gw.metrics.jobs_rejected.inc("429")
            return _error(429, "busy", backlog, retry_after=gw.config.intake.retry_after)
        if held and not gw.admission.try_acquire(held):
            gw.metrics.jobs_rejected.inc("429")
            return _error(
                429,
                "busy",
                f"{gw.admission.inflight} recipients are in flight (limit {gw.admission.limit}); retry later",
                retry_after=gw.config.intake.retry_after,
            )
        job_id = _job_ids.next()
        now = gw.clock.now()
        response = {"job_id": job_id, "recipients": n}
        if accepted.warnings:
            response["warnings"] = accepted.warnings
        reply_body = _json.encode(response)
        record = None
        if idempotency is not None:
            record = IdempotencyRecord(
                key=idempotency[0],
                body_hash=idempotency[1],
                status=202,
                response=reply_body,
                expires_at=now + seconds(gw.config.intake.idempotency_ttl),
            )
        job_record = JobRecord(
            id=job_id,
            campaign=job.campaign,
            state="accepted",
            recipients=n,
            cursor=0,
            warnings=accepted.warnings,
            created_at=round(now, 6),  # as the API shows it (RFC 3339, microseconds): filters match exactly
            tenant=tenant,
        )
        try:
            existing = await gw.store.accept_job(job_record, body, record, now)
        except StoreBusy as exc:
            gw.metrics.jobs_rejected.inc("429")
            return _error(
                429,
                "busy",
                f"{exc}; retry later",
                retry_after=gw.config.intake.retry_after,
            )
        except Exception as exc:
            # Never a 202 for a job that is not stored: the caller retries, nothing is lost.
            gw.admission.release(held)
            log.error("store refused job %s: %s", job_id, exc)
            gw.metrics.jobs_rejected.inc("503")
            return _error(
                503,
                "store_unavailable",
                "the job could not be stored; retry later",
                retry_after=gw.config.intake.retry_after,
            )
        if existing is not None:  # another process took the key between our read and write
            gw.admission.release(held)
            if existing.body_hash != idempotency[1]:  # type: ignore[index]
                return await self._conflict(existing, body)
            return _replay(existing)
        gw.metrics.jobs_accepted.inc()
        gw.metrics.recipients_accepted.inc(by=n)
        log.info(
            "job %s accepted: campaign %s, %d recipients",
            job_id,
            job.campaign,
            n,
            extra={"event": "job.accepted", "job_id": job_id, "campaign": job.campaign, "recipients": n},
        )
        assert gw.runner is not None
        if not gw.store.shared_queue:
            gw.runner.submit(RunningJob(job_id, job, accepted.variants, 0, gw.clock.monotonic(), tenant=tenant))
        return Reply(202, reply_body, {"Location": f"/v1/jobs/{job_id}"}, job_id)


def _replay(existing: IdempotencyRecord) -> Reply:
    job_id = _replayed.decode(existing.response).job_id if existing.status == 202 else None
    return Reply(existing.status, existing.response, {"Idempotent-Replayed": "true"}, job_id)


def meaning_hash(body: bytes) -> str:
    """What an Idempotency-Key is compared on: the decoded JSON, whatever its whitespace or
    key order (a body that is not JSON: its bytes)."""
    try:
        canonical = _sorted.encode(msgspec.json.decode(body))
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deeply (a 400 later)
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def differences(first: Any, second: Any, path: str = "$", limit: int = 5) -> list[str]:
    """JSON paths where two decoded documents differ (at most `limit`)."""
    if type(first) is not type(second):
        return [path]
    if isinstance(first, dict):
        found: list[str] = []
        for key in sorted(first.keys() | second.keys(), key=str):
            if len(found) >= limit:
                break
            sub = f"{path}.{key}"
            if key not in first or key not in second:
                found.append(sub)
            else:
                found += differences(first[key], second[key], sub, limit - len(found))
        return found
    if isinstance(first, list):
        found = [] if len(first) == len(second) else [f"{path} (length {len(first)} then {len(second)})"]
        for n, (a, b) in enumerate(zip(first, second, strict=False)):
            if len(found) >= limit:
                break
            found += differences(a, b, f"{path}[{n}]", limit - len(found))
        return found
    return [] if first == second else [path]


def _error(status: int, error: str, message: str, retry_after: int | None = None) -> Reply:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Reply(status, _json.encode({"error": error, "message": message}), headers)
