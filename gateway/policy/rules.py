"""Per recipient and channel: the reasons a message is not sent, checked in order.

Foundation scope: channel availability, expiry, marketing subscription state and a usable
device or address. Frequency caps, quiet hours and local-time delivery extend this module
in the policy issue; the caller's contract (a suppression reason, or the destinations to
deliver to) stays.
"""

from __future__ import annotations

from gateway import decision as d
from gateway.channel import Channel
from gateway.intake.model import Device, Job, Recipient

SUBSCRIBED = frozenset({"opted_in", "subscribed"})


def check(
    job: Job, recipient: Recipient, channel: Channel | None, now: float
) -> tuple[str | None, list[Device | str]]:
    """(None, destinations) when the message may go out, else (reason, [])."""
    if channel is None:
        return d.CHANNEL_UNAVAILABLE, []
    if job.expires_at is not None and job.expires_at.timestamp() <= now:
        return d.EXPIRED, []
    if job.category == "marketing":
        state = recipient.subscriptions.get(channel.subscription_group)
        if state not in SUBSCRIBED:
            return (d.UNSUBSCRIBED if state == "unsubscribed" else d.NOT_SUBSCRIBED), []
    destinations = channel.destinations(recipient)
    if not destinations:
        return d.NO_DEVICE, []
    return None, destinations
