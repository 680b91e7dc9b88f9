"""Local fake providers that speak the real protocols, for tests, the demo, benchmarks
and plugin authors. Each can inject faults (statuses, Retry-After, latency, drops)."""

from gateway.testing.apns import ApnsFake, ApnsFault, ApnsNotification
from gateway.testing.examples import example_jobs
from gateway.testing.fcm import FcmFake, FcmFault
from gateway.testing.smtp import ReceivedMail, SmtpFake
from gateway.testing.webhook import Fault, Received, WebhookReceiver, new_secret
from gateway.testing.webpush import Pushed, WebPushFake, WebPushFault

__all__ = [
    "ApnsFake",
    "ApnsFault",
    "ApnsNotification",
    "Fault",
    "FcmFake",
    "FcmFault",
    "Pushed",
    "Received",
    "ReceivedMail",
    "SmtpFake",
    "WebPushFake",
    "WebPushFault",
    "WebhookReceiver",
    "example_jobs",
    "new_secret",
]
