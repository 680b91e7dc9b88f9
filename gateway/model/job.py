"""The send job: the upstream contract of PRODUCT.md, as msgspec Structs.

Every Struct forbids unknown fields, so a typo upstream is a 400 naming the field rather
than a silently ignored option. Shape is checked here; rules that span fields (the default
variant is last, a device has what its channel needs, limits from config) live in
`gateway.intake.validate`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Str = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
HHMM = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
SubscriptionState = Literal["opted_in", "subscribed", "unsubscribed"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """gc=False: decoded JSON cannot form reference cycles, and a 10,000-recipient job is
    tens of thousands of objects the cyclic GC would otherwise walk on every collection."""


class PushContent(_Strict):
    """Push copy. Every string is a Liquid template. Also used for per-channel overrides
    (`content.apns`, `content.fcm`, `content.webpush`), which replace fields one by one."""

    title: str | None = None
    body: str | None = None
    deep_link: str | None = None
    image: str | None = None
    data: dict[str, str] | None = None
    badge: Annotated[int, msgspec.Meta(ge=0)] | None = None
    sound: str | None = None
    collapse_key: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class EmailContent(_Strict):
    subject: str
    text: str | None = None
    html: str | None = None


class SpeakerContent(_Strict):
    speech: str


class Content(_Strict):
    push: PushContent | None = None
    email: EmailContent | None = None
    speaker: SpeakerContent | None = None
    apns: PushContent | None = None
    fcm: PushContent | None = None
    webpush: PushContent | None = None


class Variant(_Strict):
    name: Name
    content: Content
    when: str | None = None


class Event(_Strict):
    count: Annotated[int, msgspec.Meta(ge=0)] = 0
    last_at: datetime | None = None
    properties: dict[str, Any] = {}


class WebPushKeys(_Strict):
    p256dh: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    auth: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class WebPushSubscription(_Strict):
    endpoint: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    keys: WebPushKeys
    # camelCase: the browser's PushSubscription.toJSON() field, posted as is.
    expirationTime: int | None = None


class Device(_Strict):
    """One device or endpoint. Which fields are required depends on `channel`
    (`validate.DEVICE_FIELDS`); a plugin channel may use `token` or `target`."""

    channel: Name
    token: Str | None = None
    subscription: WebPushSubscription | None = None
    target: Name | None = None
    device_id: Name | None = None
    app: Name | None = None


class Recipient(_Strict):
    user_id: Name
    timezone: str | None = None
    attributes: dict[str, Any] = {}
    events: dict[str, Event] = {}
    properties: dict[str, Any] = {}
    subscriptions: dict[str, SubscriptionState] = {}
    email: Annotated[str, msgspec.Meta(max_length=320)] | None = None
    devices: list[Device] = []


class Job(_Strict):
    campaign: Name
    channels: Annotated[list[Name], msgspec.Meta(min_length=1)]
    variants: Annotated[list[Variant], msgspec.Meta(min_length=1)]
    recipients: Annotated[list[Recipient], msgspec.Meta(min_length=1)]
    category: Literal["marketing", "transactional"] = "marketing"
    tags: list[Name] = []
    routing: Literal["all", "first"] = "all"
    quiet_hours: Literal["defer", "drop", "ignore"] | None = None
    deliver_at_local: HHMM | None = None
    expires_at: datetime | None = None


JOB_DECODER = msgspec.json.Decoder(Job)
