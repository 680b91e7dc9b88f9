"""Email over SMTP (aiosmtplib), from a pool of connected clients.

One aiosmtplib client serialises its sends and does not pipeline, so throughput comes
from a pool of connections. A dropped connection is re-opened and the send tried once
more before it counts as a failure. Replies map to results by their class: 4xx is
transient, 5xx permanent, and a 5xx that says the mailbox does not exist (550, 551, 553)
is a dead address (`invalid_token`), reported so upstream can stop mailing it.

Marketing mail carries RFC 8058 one-click unsubscribe headers (Gmail and Yahoo require
them for bulk senders): a per-recipient token signed with the configured secret, served by
the gateway's `POST /v1/unsubscribe/{token}`. Transactional mail is exempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
from collections import deque
from collections.abc import Sequence
from email.utils import formataddr, formatdate
from typing import Literal

import aiosmtplib
import msgspec

from gateway.plugin import (
    AddressError,
    Channel,
    ConfigError,
    Delivery,
    Device,
    Duration,
    EmailContent,
    InvalidToken,
    PermanentFailure,
    Recipient,
    Result,
    Secret,
    SecretRef,
    Sent,
    TransientFailure,
    hookimpl,
    invalid_request,
    map_bounded,
    parse_email,
    seconds,
)
from plugins.mime import compose

DEAD_MAILBOX_CODES = frozenset({550, 551, 553})


class UnsubscribeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The gateway's public base URL: links are <url>/v1/unsubscribe/<token>.
    url: str
    secret: SecretRef  # signs the tokens
    mailto: str | None = None  # optional second method, e.g. unsubscribe@example.com


class MailConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str
    port: int = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    ca_file: str | None = None  # trust this CA instead of the system's (private relays, tests)
    username: str | None = None
    password: SecretRef | None = None
    from_address: str
    from_name: str | None = None
    reply_to: str | None = None
    pool_size: int = 8  # connections, each sending one message at a time
    timeout: Duration = "30s"
    unsubscribe: UnsubscribeConfig | None = None
    # The relay takes internationalized addresses (RFC 6531): addresses with non-ASCII
    # before the @ are accepted at intake and sent with SMTPUTF8; otherwise they are 400s.
    smtputf8: bool = False


def sign_token(key: bytes, address: str, campaign: str, tenant: str = "default") -> str:
    fields = [address, campaign] if tenant == "default" else [address, campaign, tenant]
    payload = base64.urlsafe_b64encode(msgspec.json.encode(fields)).rstrip(b"=")
    mac = base64.urlsafe_b64encode(hmac.new(key, payload, hashlib.sha256).digest()[:18])
    return (payload + b"." + mac).decode()


def read_token(key: bytes, token: str) -> tuple[str, ...] | None:
    """(address, campaign[, tenant]) for an authentic token, else None."""
    try:
        payload, _, mac = token.encode("ascii").partition(b".")
    except UnicodeEncodeError:  # a token of ours is base64url: this one was not made here
        return None
    expected = base64.urlsafe_b64encode(hmac.new(key, payload, hashlib.sha256).digest()[:18])
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        fields = msgspec.json.decode(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None
    if not isinstance(fields, list) or len(fields) not in (2, 3):
        return None
    return tuple(str(f) for f in fields)


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """After a refused envelope: RSET, and the connection is clean only if it answers 250
    (aiosmtplib tries one too, but swallows its failure)."""
    try:
        return (await client.rset()).code == 250
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return False


def classify_reply(code: int, message: str) -> Result:
    if 400 <= code < 500:
        return TransientFailure(f"smtp_{code}")
    if code in DEAD_MAILBOX_CODES:
        return InvalidToken(f"smtp_{code}")
    return PermanentFailure(f"smtp_{code}", message[:200] or None)


class _Pool:
    """Connected clients, at most `pool_size`. A client goes back only in a clean state
    (no envelope open); any other is closed and another is opened when needed."""

    def __init__(self, config: MailConfig, password: Secret | None, tls: ssl.SSLContext | None):
        self.config = config
        self.password = password
        self.tls = tls
        self.idle: list[aiosmtplib.SMTP] = []
        self.created = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> aiosmtplib.SMTP:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.created < self.config.pool_size:
                self.created += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.discard(None)
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)

    def release(self, client: aiosmtplib.SMTP) -> None:
        self.idle.append(client)
        self._wake()

    def discard(self, client: aiosmtplib.SMTP | None) -> None:
        """Close a client whose state is unknown; its place may be taken by a new one."""
        if client is not None:
            client.close()
        self.created -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def reconnect(self, client: aiosmtplib.SMTP) -> aiosmtplib.SMTP:
        client.close()
        return await self._connect()

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self.config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=seconds(c.timeout),
            use_tls=c.security == "tls",
            start_tls=c.security == "starttls",
            tls_context=self.tls,
            username=c.username,
            password=self.password.reveal() if self.password else None,
        )
        await client.connect()
        return client

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class MailChannel(Channel):
    name = "email"
    content_kind = "email"
    subscription_group = "email"
    Config = MailConfig

    def __init__(self, config: MailConfig, pool: _Pool, unsubscribe_key: bytes | None):
        super().__init__(config)
        self.pool = pool
        self.unsubscribe_key = unsubscribe_key
        self.domain = config.from_address.rpartition("@")[2] or "gateway.invalid"

    @classmethod
    def check_config(cls, config: MailConfig, path: str) -> list[str]:
        problems = []
        if "@" not in config.from_address:
            problems.append(f"{path}.from_address: expected an email address")
        if config.password is not None:
            try:
                config.password.resolve(f"{path}.password")
            except ConfigError as exc:
                problems += exc.problems
        if config.unsubscribe is not None:
            try:
                config.unsubscribe.secret.resolve(f"{path}.unsubscribe.secret")
            except ConfigError as exc:
                problems += exc.problems
            if not config.unsubscribe.url.startswith(("https://", "http://")):
                problems.append(f"{path}.unsubscribe.url: expected the gateway's public http(s) URL")
        if config.ca_file is not None:
            try:
                ssl.create_default_context(cafile=config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"{path}.ca_file: {exc}")
        return problems

    @classmethod
    async def create(cls, config: MailConfig) -> MailChannel:
        tls = ssl.create_default_context(cafile=config.ca_file) if config.security != "none" else None
        password = config.password.resolve("channels.email.password") if config.password else None
        key = None
        if config.unsubscribe is not None:
            key = config.unsubscribe.secret.resolve("channels.email.unsubscribe.secret").reveal().encode()
        return cls(config, _Pool(config, password, tls), key)

    def destinations(self, recipient: Recipient) -> list[Device | str]:
        """The address as SMTP reads it (intake checked it; a job stored before that check
        with an unusable address has nowhere to go)."""
        if not recipient.email:
            return []
        try:
            return [parse_email(recipient.email).address]
        except AddressError:
            return []

    def check_recipient(self, recipient: Recipient) -> list[tuple[str, str]]:
        if recipient.email and not self.config.smtputf8:
            try:
                if parse_email(recipient.email).utf8:
                    return [
                        (
                            "email",
                            "an address outside ASCII before the @ needs SMTPUTF8: set [channels.email] "
                            "smtputf8 = true if the relay offers it",
                        )
                    ]
            except AddressError:
                pass  # intake reports it
        return []

    def max_in_flight(self) -> int:
        return self.config.pool_size

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await map_bounded(deliveries, self._send, self.config.pool_size)

    def message(self, delivery: Delivery) -> bytes:
        """The RFC 5322 message, composed as bytes: building an `EmailMessage` under the
        default policy, then flattening and re-parsing its addresses in `send_message`,
        cost ~3 ms of CPU per mail here, most of the email path (`mime.py` does the
        same work directly)."""
        content: EmailContent = delivery.content
        to = delivery.to
        assert isinstance(to, str)
        sender = (
            formataddr((self.config.from_name, self.config.from_address))
            if self.config.from_name
            else self.config.from_address
        )
        headers = [
            ("From", sender),
            ("To", to),
            ("Subject", content.subject),
            ("Date", formatdate(localtime=False, usegmt=True)),
            # Stable across retries: a relay that saw the first attempt can drop the copy.
            ("Message-ID", self.message_id(delivery)),
        ]
        if self.config.reply_to:
            headers.append(("Reply-To", self.config.reply_to))
        if delivery.category == "marketing" and self.unsubscribe_key is not None:
            unsubscribe = self.config.unsubscribe
            assert unsubscribe is not None
            token = sign_token(self.unsubscribe_key, to, delivery.campaign, delivery.tenant)
            links = [f"<{unsubscribe.url.rstrip('/')}/v1/unsubscribe/{token}>"]
            if unsubscribe.mailto:
                links.append(f"<mailto:{unsubscribe.mailto}?subject=unsubscribe>")
            headers.append(("List-Unsubscribe", ", ".join(links)))
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return compose(headers, content.text or "", content.html or None, boundary_seed=delivery.id)

    def message_id(self, delivery: Delivery) -> str:
        return f"<{delivery.id}@{self.domain}>"

    async def _send(self, delivery: Delivery) -> Result:
        """Build the message (what fails here is this delivery's alone), then send it on a
        pooled connection that goes back only in a clean state."""
        address = parse_email(str(delivery.to))
        if address.utf8 and not self.config.smtputf8:
            return PermanentFailure(
                "invalid_request", "the address needs SMTPUTF8, which [channels.email] does not enable"
            )
        msg = self.message(delivery)
        options = ["SMTPUTF8"] if address.utf8 else []
        try:
            client = await self.pool.acquire()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return TransientFailure(f"connect_failed: {type(exc).__name__}")
        clean = False
        try:
            result, clean = await self._transaction(client, address.address, msg, options, self.message_id(delivery))
            return result
        finally:
            if clean:
                self.pool.release(client)
            else:
                self.pool.discard(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, address: str, msg: bytes, options: list[str], message_id: str
    ) -> tuple[Result, bool]:
        """(the result, whether the connection is in a clean state afterwards)."""
        try:
            for attempt in (1, 2):
                try:
                    await client.sendmail(self.config.from_address, [address], msg, mail_options=options)
                    return Sent(message_id), True
                except aiosmtplib.SMTPServerDisconnected:
                    if attempt == 2:
                        return TransientFailure("disconnected"), False
                    client = await self.pool.reconnect(client)
            raise AssertionError("unreachable")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return classify_reply(refused.code, refused.message), await _reset(client)
        except aiosmtplib.SMTPResponseException as exc:
            return classify_reply(exc.code, exc.message), await _reset(client)
        except aiosmtplib.SMTPNotSupported as exc:  # e.g. SMTPUTF8 asked of a relay without it
            return invalid_request(exc), False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return TransientFailure(f"smtp_error: {type(exc).__name__}"), False
        except ValueError as exc:  # an address or message aiosmtplib will not put on the wire
            return invalid_request(exc), False

    def read_unsubscribe_token(self, token: str) -> tuple[str, ...] | None:
        return read_token(self.unsubscribe_key, token) if self.unsubscribe_key else None

    async def aclose(self) -> None:
        await self.pool.close()


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [MailChannel]
