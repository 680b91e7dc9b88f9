"""The public API for plugin authors: everything a channel plugin needs, from one module.

    from gateway.plugin import Channel, Delivery, Sent, TransientFailure, hookimpl, map_bounded

`__all__` below is the contract (a test pins it); every other module of the gateway is
private and may change without notice, as httpx keeps its `_modules` behind its top-level
names. The built-in channels in `plugins/` and `examples/gateway-sms` import only from
here. The fake providers (`WebhookReceiver`, `ApnsFake`, ...) are importable from here
too, for a plugin's tests; they load on first use, so a deployed plugin does not pull in
the test servers.
"""

from __future__ import annotations

from typing import Any

from gateway.channel import (
    Channel,
    ContentKind,
    NoConfig,
    invalid_request,
    map_bounded,
    parse_retry_after,
    report_answers,
)
from gateway.config import ConfigError, Duration, Secret, SecretRef, did_you_mean, seconds
from gateway.hookspecs import hookimpl
from gateway.logs import Throttled
from gateway.model.address import AddressError, EmailAddress, parse_email
from gateway.model.decision import Decision
from gateway.model.delivery import (
    Delivery,
    InvalidToken,
    PermanentFailure,
    RenderedContent,
    Result,
    Sent,
    TransientFailure,
)
from gateway.model.job import Device, EmailContent, PushContent, Recipient, SpeakerContent, WebPushSubscription
from gateway.transport.errors import AddressNotAllowed, RequestError
from gateway.transport.http1 import Http1Pool, HttpError
from gateway.transport.http1 import Response as Http1Response
from gateway.transport.http2 import Http2Error, Http2Pool
from gateway.transport.http2 import Response as Http2Response
from gateway.transport.seam import ApnsTransport, Http1Transport, apns_transport, http1_transport
from gateway.transport.webhooks import webhook_headers, webhook_key

# Fakes speaking the providers' protocols, for plugin tests: imported on first use.
_TESTING = (
    "ApnsFake",
    "ApnsFault",
    "Fault",
    "FcmFake",
    "FcmFault",
    "SmtpFake",
    "WebPushFake",
    "WebPushFault",
    "WebhookReceiver",
    "example_jobs",
    "new_secret",
)

__all__ = [
    # the channel contract
    "Channel",
    "ContentKind",
    "NoConfig",
    "invalid_request",
    "map_bounded",
    "parse_retry_after",
    "report_answers",
    # what a channel is handed, and what it answers
    "Delivery",
    "Device",
    "EmailContent",
    "InvalidToken",
    "PermanentFailure",
    "PushContent",
    "Recipient",
    "RenderedContent",
    "Result",
    "Sent",
    "SpeakerContent",
    "TransientFailure",
    "WebPushSubscription",
    "AddressError",
    "EmailAddress",
    "parse_email",
    # hooks
    "Decision",
    "hookimpl",
    # configuration and secrets
    "ConfigError",
    "did_you_mean",
    "Throttled",
    "Duration",
    "Secret",
    "SecretRef",
    "seconds",
    # HTTP clients a channel may use
    "Http1Pool",
    "Http1Transport",
    "Http1Response",
    "Http2Error",
    "Http2Pool",
    "ApnsTransport",
    "Http2Response",
    "HttpError",
    "RequestError",
    "AddressNotAllowed",
    "apns_transport",
    "http1_transport",
    # Standard Webhooks signing
    "webhook_headers",
    "webhook_key",
    # fake providers for tests
    *_TESTING,
]


def __getattr__(name: str) -> Any:
    if name in _TESTING:
        import gateway.testing

        return getattr(gateway.testing, name)
    raise AttributeError(f"module 'gateway.plugin' has no attribute {name!r}")
