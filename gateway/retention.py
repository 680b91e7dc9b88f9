"""What the gateway keeps about people, and for how long.

Ended jobs (completed, cancelled) are forgotten `retention.jobs` after they ended: record,
body (addresses, attributes), decisions. `erase_user` removes one user's profile data (the
recipient's attributes, events, address, devices, time zone, subscriptions) from the
stored body of every job, ended or not: their recipient keeps only its `user_id`, the key
upstream asked by. Decisions keep their outcomes. A batch already under way in memory
finishes with what it had."""

from __future__ import annotations

import logging

import msgspec

from gateway.store import JobQuery, Store
from gateway.store.base import ENDED

log = logging.getLogger(__name__)
PAGE = 200


class _Recipient(msgspec.Struct):
    user_id: str


class _UserIds(msgspec.Struct):
    recipients: list[_Recipient]


_decode_user_ids = msgspec.json.Decoder(_UserIds).decode


def user_ids(body: bytes) -> list[str]:
    """A stored job's recipients' user ids, in order (nothing else of the body decoded)."""
    return [r.user_id for r in _decode_user_ids(body).recipients]


async def purge_ended(store: Store, before: float) -> int:
    """Forget jobs that ended before `before`; how many."""
    purged = 0
    for state in ENDED:
        cursor: tuple[float, str] | None = (before, "")  # created before it, as they ended before it
        while cursor is not None:
            records, cursor = await store.list_jobs(JobQuery(state=state, limit=PAGE, before=cursor))
            for record in records:
                if record.finished_at is not None and record.finished_at < before:
                    await store.delete_job(record.id)
                    purged += 1
    if purged:
        log.info("retention: %d ended job(s) forgotten", purged, extra={"event": "retention.purged", "jobs": purged})
    return purged


async def erase_user(store: Store, tenant: str | None, user_id: str) -> list[str]:
    """Remove the user's profile data from the stored bodies of the tenant's jobs (None:
    every tenant's); the ids of the jobs changed."""
    changed = []
    cursor: tuple[float, str] | None = None
    while True:
        records, cursor = await store.list_jobs(JobQuery(tenant=tenant, limit=PAGE, before=cursor))
        for record in records:
            body = await store.job_body(record.id)
            if user_id not in user_ids(body):
                continue
            job = msgspec.json.decode(body)
            job["recipients"] = [{"user_id": user_id} if r.get("user_id") == user_id else r for r in job["recipients"]]
            await store.replace_job_body(record.id, msgspec.json.encode(job))
            changed.append(record.id)
        if cursor is None:
            break
    log.info(
        "erased a user's profile data from %d job(s)",
        len(changed),
        extra={"event": "user.erased", "jobs": len(changed)},
    )
    return changed
