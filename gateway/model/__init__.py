"""The data every layer shares: the send job, deliveries and their results, decisions,
cap reservations. A leaf: it imports nothing else of the gateway, so intake, policy, the
store, dispatch and the channels can all use it without depending on one another."""

from gateway.model.caps import CapOutcome, CapRequest, Check, Denied, Granted, new_reservation_id
from gateway.model.decision import OUTCOMES, Decision, Outcome
from gateway.model.delivery import (
    Delivery,
    InvalidToken,
    PermanentFailure,
    RenderedContent,
    Result,
    Sent,
    TransientFailure,
)
from gateway.model.job import (
    JOB_DECODER,
    Content,
    Device,
    EmailContent,
    Event,
    Job,
    PushContent,
    Recipient,
    SpeakerContent,
    Variant,
    WebPushKeys,
    WebPushSubscription,
)

__all__ = [
    "JOB_DECODER",
    "OUTCOMES",
    "CapOutcome",
    "CapRequest",
    "Check",
    "Content",
    "Decision",
    "Delivery",
    "Denied",
    "Device",
    "EmailContent",
    "Event",
    "Granted",
    "InvalidToken",
    "Job",
    "Outcome",
    "PermanentFailure",
    "PushContent",
    "Recipient",
    "RenderedContent",
    "Result",
    "Sent",
    "SpeakerContent",
    "TransientFailure",
    "Variant",
    "WebPushKeys",
    "WebPushSubscription",
    "new_reservation_id",
]
