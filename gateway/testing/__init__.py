"""Local fake providers that speak the real protocols, for tests, the demo, benchmarks
and plugin authors. Each can inject faults (statuses, Retry-After, latency, drops)."""

from gateway.testing.fcm import FcmFake, FcmFault
from gateway.testing.smtp import ReceivedMail, SmtpFake
from gateway.testing.webhook import Fault, Received, WebhookReceiver, new_secret

__all__ = ["Fault", "FcmFake", "FcmFault", "Received", "ReceivedMail", "SmtpFake", "WebhookReceiver", "new_secret"]
