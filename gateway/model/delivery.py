"""What a channel is handed and what it answers: one delivery in, one result out.

    Result
     +-- Sent                 accepted by the provider
     +-- PermanentFailure     do not retry (payload refused, configuration, unknown target)
     +-- TransientFailure     retry later; `retry_after` seconds when the provider said so
     +-- InvalidToken         the token or subscription is dead: upstream should delete it

Results are data, not exceptions, so one dead token or one refused request never aborts
the rest of a batch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from gateway.model.job import Device, EmailContent, PushContent, SpeakerContent

RenderedContent = PushContent | EmailContent | SpeakerContent


class Delivery(msgspec.Struct, kw_only=True):
    """One message to one device or address."""

    id: str  # stable across retries and restarts: use it as the provider idempotency key
    job_id: str
    campaign: str
    category: str
    recipient: int  # index in the job's recipient list
    user_id: str
    channel: str
    to: Device | str  # the device, or the address (email) for address-based channels
    content: Any  # the RenderedContent of the channel's content kind
    tags: list[str] = []
    expires_at: datetime | None = None
    tenant: str = "default"  # whose job: a one-click unsubscribe link records the opt-out for it
    attempt: int = 1  # counted across restarts and deferrals, as is the first attempt's time
    first_attempt: float | None = None  # epoch seconds; retries stop max_delivery_time after it


class Sent(msgspec.Struct, tag="sent"):
    provider_id: str | None = None


class PermanentFailure(msgspec.Struct, tag="failed"):
    reason: str
    detail: str | None = None


class TransientFailure(msgspec.Struct, tag="transient"):
    reason: str
    retry_after: float | None = None


class InvalidToken(msgspec.Struct, tag="invalid_token"):
    reason: str


Result = Sent | PermanentFailure | TransientFailure | InvalidToken
