"""A local SMTP server (aiosmtpd) that records what it accepts, for tests and the demo.

It speaks real SMTP on a TCP port: optionally STARTTLS (pass a server `ssl.SSLContext`,
e.g. from trustme) and AUTH (username/password). Faults are scripted per recipient:
`fault(address, attempt)` returns an SMTP reply such as "451 4.3.0 try later" or
"550 5.1.1 no such user", a number of seconds to wait before accepting, or None to
accept. Accepted messages are parsed into `email.message.EmailMessage` objects so tests
can assert on headers and parts.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from gateway.testing._http import FakeServer

SmtpFault = Callable[[str, int], "str | float | None"]
# aiosmtpd logs every SMTP command at INFO: keep that out of demo and test output.
logging.getLogger("mail.log").setLevel(logging.WARNING)


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    _parsed: EmailMessage | None = None

    @property
    def message(self) -> EmailMessage:
        """Parsed on first use: parsing every mail as it arrives made this fake, not the
        gateway, most of the CPU in the email benchmarks."""
        if self._parsed is None:
            self._parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert self._parsed is not None
        return self._parsed


@dataclass
class SmtpFake(FakeServer):
    tls_context: ssl.SSLContext | None = None  # offers STARTTLS when set
    require_starttls: bool = False
    username: str | None = None  # AUTH required when set
    password: str | None = None
    fault: SmtpFault | None = None
    latency: float = 0.0  # seconds before answering each RCPT
    smtputf8: bool = False  # offer SMTPUTF8 (RFC 6531): addresses outside ASCII
    received: list[ReceivedMail] = field(default_factory=list)
    # time.monotonic() of each first receipt, in the order of `received` (latency figures)
    arrivals: list[float] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    # -- aiosmtpd handler hooks ------------------------------------------------------
    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        attempt = self.attempts[address] = self.attempts.get(address, 0) + 1
        if self.latency:
            await asyncio.sleep(self.latency)
        reply = self.fault(address, attempt) if self.fault else None
        if isinstance(reply, (int, float)):
            await asyncio.sleep(reply)
        elif reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.arrivals.append(time.monotonic())
        self.received.append(
            ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls=session.ssl is not None)
        )
        return "250 2.0.0 queued"

    def _authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        return AuthResult(success=ok)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        auth = self.username is not None

        def factory() -> SMTP:
            return SMTP(
                self,
                enable_SMTPUTF8=self.smtputf8,
                hostname="smtp.test",
                tls_context=self.tls_context,
                require_starttls=self.require_starttls,
                authenticator=self._authenticate if auth else None,
                auth_required=auth,
                auth_require_tls=self.tls_context is not None,
            )

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def to(self, address: str) -> list[EmailMessage]:
        return [r.message for r in self.received if address in r.rcpt_tos]
