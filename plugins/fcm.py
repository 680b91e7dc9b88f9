"""Firebase Cloud Messaging, HTTP v1.

Auth is a Google service account: an RS256 JWT assertion exchanged at the account's
`token_uri` for an OAuth2 access token, cached and refreshed a few minutes early, one
refresh at a time (`_Tokens`). One request per message (the batch endpoint is gone):
throughput comes from concurrency over keep-alive connections. Errors are classified by
`details[].errorCode` (ERRORS below); UNAUTHENTICATED refreshes the token once and retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp
import jwt
import msgspec

from gateway.plugin import (
    Channel,
    ConfigError,
    Delivery,
    Duration,
    InvalidToken,
    PermanentFailure,
    PushContent,
    RequestError,
    Result,
    SecretRef,
    Sent,
    Throttled,
    TransientFailure,
    hookimpl,
    http1_transport,
    invalid_request,
    map_bounded,
    parse_retry_after,
    seconds,
)

log = logging.getLogger(__name__)
advice = Throttled(log)  # per failed delivery: at most a line a minute
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_PAYLOAD_BYTES = 4096

# errorCode -> what it means for this delivery. Transient ones honour Retry-After.
ERRORS: dict[str, str] = {
    "UNREGISTERED": "invalid_token",  # 404: the app was uninstalled; delete the token
    "SENDER_ID_MISMATCH": "invalid_token",  # 403: the token belongs to another sender
    "INVALID_ARGUMENT": "permanent",  # 400: a dead token when the message says so, else a payload bug
    "THIRD_PARTY_AUTH_ERROR": "configuration",  # 401: APNs/web push credentials in Firebase
    "QUOTA_EXCEEDED": "transient",  # 429
    "UNAVAILABLE": "transient",  # 503
    "INTERNAL": "transient",  # 500
}


class FcmConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The service account JSON (from the Firebase console), from a file or a secret.
    service_account: SecretRef
    project_id: str | None = None  # default: the service account's project_id
    endpoint: str = "https://fcm.googleapis.com"  # point tests and staging elsewhere
    concurrency: int = 100  # requests in flight (HTTP/2 allows ~100 streams per connection)
    timeout: Duration = "10s"
    # "gateway": our HTTP/1.1 client (gateway/transport/http1.py, ~4x less CPU per request);
    # "aiohttp": aiohttp's client
    transport: Literal["gateway", "aiohttp"] = "gateway"
    default_ttl: Duration = "4w"  # when the job has no expires_at
    android_priority: str = "HIGH"
    android_channel_id: str | None = None


class ServiceAccount(msgspec.Struct, kw_only=True):
    client_email: str
    private_key: str
    private_key_id: str
    token_uri: str
    project_id: str | None = None


def load_account(config: FcmConfig, path: str) -> ServiceAccount:
    raw = config.service_account.resolve(f"{path}.service_account").reveal()
    try:
        return msgspec.json.decode(raw, type=ServiceAccount)
    except msgspec.DecodeError as exc:
        raise ConfigError([f"{path}.service_account: not a service account JSON: {exc}"]) from None


class _Tokens:
    """The OAuth2 access token: cached, refreshed early, one refresh at a time."""

    REFRESH_EARLY = 300.0

    def __init__(self, account: ServiceAccount, session: aiohttp.ClientSession):
        self.account = account
        self.session = session
        self.token: str | None = None
        self.expires_at = 0.0
        self.lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self, stale: str | None = None) -> str:
        """A valid token; `stale`: the one the server just refused (refresh it)."""
        if self.token is not None and self.token != stale and time.time() < self.expires_at - self.REFRESH_EARLY:
            return self.token
        async with self.lock:  # single flight: concurrent callers wait for one refresh
            if self.token is not None and self.token != stale and time.time() < self.expires_at - self.REFRESH_EARLY:
                return self.token
            now = int(time.time())
            assertion = jwt.encode(
                {
                    "iss": self.account.client_email,
                    "scope": SCOPE,
                    "aud": self.account.token_uri,
                    "iat": now,
                    "exp": now + 3600,
                },
                self.account.private_key,
                algorithm="RS256",
                headers={"kid": self.account.private_key_id},
            )
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
            async with self.session.post(self.account.token_uri, data=form) as response:
                status, raw = response.status, await response.read()
            try:
                body = msgspec.json.decode(raw, type=dict[str, Any])
            except msgspec.DecodeError:
                raise _AuthFailed(f"token endpoint answered {status} without JSON") from None
            if 400 <= status < 500 and status not in (408, 429):
                raise _AuthRefused(f"token endpoint answered {status}: {body.get('error')}")
            if status != 200 or not isinstance(body.get("access_token"), str):
                raise _AuthFailed(f"token endpoint answered {status}: {body.get('error')}")
            token: str = body["access_token"]
            self.token = token
            self.expires_at = now + float(body.get("expires_in", 3600))
            self.refreshes += 1
            return token


class _AuthFailed(Exception):
    """The token endpoint could not be reached or failed: transient."""


class _AuthRefused(Exception):
    """The token endpoint refused the service account's assertion: configuration."""


class FcmChannel(Channel):
    name = "fcm"
    content_kind = "push"
    subscription_group = "push"
    Config = FcmConfig
    max_payload_bytes = MAX_PAYLOAD_BYTES

    def __init__(self, config: FcmConfig, account: ServiceAccount, session: aiohttp.ClientSession):
        super().__init__(config)
        self.account = account
        self.session = session
        self.tokens = _Tokens(account, session)
        project = config.project_id or account.project_id
        self.url = f"{config.endpoint.rstrip('/')}/v1/projects/{project}/messages:send"
        # Sends are small POSTs to one origin: the lean HTTP/1.1 client (see
        # gateway/transport/http1.py); the rare token refresh keeps aiohttp.
        self.pool = http1_transport(config.transport, self.url, max_idle=config.concurrency)
        self.timeout = seconds(config.timeout)

    @classmethod
    def check_config(cls, config: FcmConfig, path: str) -> list[str]:
        try:
            account = load_account(config, path)
        except ConfigError as exc:
            return exc.problems
        if not (config.project_id or account.project_id):
            return [f"{path}.project_id: not set, and the service account names no project_id"]
        return []

    @classmethod
    async def create(cls, config: FcmConfig) -> FcmChannel:
        account = load_account(config, "channels.fcm")
        connector = aiohttp.TCPConnector(limit=config.concurrency)
        return cls(config, account, aiohttp.ClientSession(connector=connector))

    def message(self, delivery: Delivery, content: PushContent | None = None) -> dict[str, Any]:
        content = content or delivery.content
        to = delivery.to
        token = getattr(to, "token", None)
        notification = {
            k: v for k, v in (("title", content.title), ("body", content.body), ("image", content.image)) if v
        }
        data = dict(content.data or {})
        if content.deep_link:
            data.setdefault("deep_link", content.deep_link)
        android: dict[str, Any] = {"priority": self.config.android_priority, "ttl": f"{self._ttl(delivery)}s"}
        if content.collapse_key:
            android["collapse_key"] = content.collapse_key
        android_notification = {
            k: v for k, v in (("channel_id", self.config.android_channel_id), ("sound", content.sound)) if v
        }
        if android_notification:
            android["notification"] = android_notification
        message: dict[str, Any] = {"token": token, "android": android}
        if notification:
            message["notification"] = notification
        if data:
            message["data"] = {k: str(v) for k, v in data.items()}  # FCM takes strings only
        return {"message": message}

    def _ttl(self, delivery: Delivery) -> int:
        if delivery.expires_at is not None:
            return max(0, int(delivery.expires_at.timestamp() - time.time()))
        return int(seconds(self.config.default_ttl))

    def payload_size(self, content: PushContent) -> int:
        probe = Delivery(
            id="",
            job_id="",
            campaign="",
            category="",
            recipient=0,
            user_id="",
            channel="fcm",
            to="x" * 163,
            content=content,
        )  # registration tokens are ~163 characters
        return len(json.dumps(self.message(probe), separators=(",", ":"), ensure_ascii=False).encode())

    def max_in_flight(self) -> int:
        return self.config.concurrency

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return await map_bounded(deliveries, self._send, self.config.concurrency)

    async def _send(self, delivery: Delivery) -> Result:
        body = msgspec.json.encode(self.message(delivery))
        stale = None
        for _ in range(2):  # a second try only after refreshing a refused token
            try:
                token = await self.tokens.get(stale)
            except _AuthRefused as exc:  # the service account itself: no retry fixes it
                advice.error("fcm: the token endpoint refused the service account: %s", exc)
                return PermanentFailure("credentials", str(exc)[:200])
            except (_AuthFailed, aiohttp.ClientError, TimeoutError) as exc:
                advice.error("fcm: cannot get an OAuth token: %s", exc)
                return TransientFailure("oauth_unavailable")
            try:
                response = await self.pool.post(
                    self.pool.path,
                    (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")),
                    body,
                    self.timeout,
                )
                payload = msgspec.json.decode(response.body) if response.body else {}
                status = response.status
            except RequestError as exc:  # our side: a value that cannot go in a header
                return invalid_request(exc)
            except TimeoutError:
                return TransientFailure("timeout")
            except (OSError, msgspec.DecodeError) as exc:  # refused, reset, TLS, cut, not JSON
                return TransientFailure(f"connection_error: {type(exc).__name__}")
            if status == 200:
                return Sent(payload.get("name"))
            code, message = _error_code(payload)
            if status == 401 and code in (None, "UNAUTHENTICATED") and stale is None:
                stale = token
                continue
            return classify(status, code, message, parse_retry_after(response.headers.get("retry-after"), time.time()))
        advice.error("fcm: credentials refused after a token refresh")
        return PermanentFailure("credentials", "UNAUTHENTICATED after refreshing the OAuth token")

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self.session.close()


def _error_code(payload: Any) -> tuple[str | None, str]:
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    for detail in error.get("details", []) or []:
        if str(detail.get("@type", "")).endswith("FcmError") and detail.get("errorCode"):
            return detail["errorCode"], error.get("message", "")
    return error.get("status"), error.get("message", "")


def classify(status: int, code: str | None, message: str, retry_after: float | None) -> Result:
    kind = ERRORS.get(code or "")
    if kind == "invalid_token":
        return InvalidToken((code or "").lower())
    if kind == "transient" or status in (429, 500, 502, 503, 504):
        return TransientFailure((code or f"http_{status}").lower(), retry_after)
    if kind == "configuration":
        advice.error("fcm: %s: %s (fix the credentials in Firebase, not the token)", code, message)
        return PermanentFailure("third_party_auth_error", message[:200] or None)
    if code == "INVALID_ARGUMENT" and "registration token" in message.lower():
        return InvalidToken("invalid_registration")
    return PermanentFailure((code or f"http_{status}").lower(), message[:200] or None)


@hookimpl(trylast=True)
def register_channels() -> list[type[Channel]]:
    return [FcmChannel]
