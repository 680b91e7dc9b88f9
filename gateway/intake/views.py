"""What the API shows of jobs and decisions: the stores' records with RFC 3339 times."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from gateway.model.decision import OUTCOMES, decision_json
from gateway.model.instant import rfc3339
from gateway.store import JobRecord, Store


def encode_cursor(position: Any) -> str:
    """An opaque cursor for the next page: the position of the last item shown."""
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str, kind: Any) -> Any:
    """The position a cursor of ours holds, or None for anything else."""
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=kind)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def job_summary(record: JobRecord, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "job_id": record.id,
        "campaign": record.campaign,
        "state": record.state,
        "recipients": record.recipients,
        "recipients_done": record.cursor,
        "warnings": record.warnings,
        "created_at": rfc3339(record.created_at),
        "finished_at": rfc3339(record.finished_at) if record.finished_at is not None else None,
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
    }


async def job_view(store: Store, record: JobRecord, offset: int, limit: int) -> dict[str, Any]:
    """A job's state, counts and a page of its decisions."""
    decisions = await store.decisions(record.id, offset, limit)
    return {
        **job_summary(record, await store.outcome_counts(record.id)),
        "decisions": [decision_json(d) for d in decisions],
        "offset": offset,
        "next_offset": offset + limit if len(decisions) == limit else None,
    }
