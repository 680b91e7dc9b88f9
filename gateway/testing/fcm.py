"""A local FCM HTTP v1 service: an OAuth2 token endpoint and the send endpoint.

The token endpoint verifies the service account's RS256 JWT assertion (signature with the
account's public key, issuer, audience = token_uri, scope, key id) before it issues an
access token; the send endpoint requires one of those tokens, checks the message (a
token, string data values, 4096 bytes), and answers with FCM's error bodies for scripted
faults: `fault(token, attempt) -> FcmFault | None`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.testing._http import FakeServer
from gateway.testing._http1 import Request, Response, after, json_response, serve_http1

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass
class FcmFault:
    status: int = 200  # 200 with delay/drop: answer normally, late or not at all
    error_code: str | None = None  # details[].errorCode, e.g. "UNREGISTERED"
    message: str = "scripted fault"
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class FcmFake(FakeServer):
    project_id: str = "demo-project"
    fault: Callable[[str, int], FcmFault | None] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    # time.monotonic() of each first receipt, in the order of `received` (latency figures)
    arrivals: list[float] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    rejected_assertions: list[str] = field(default_factory=list)
    url: str = ""
    engine: str = "gateway"  # or "aiohttp": its server, which shares no code with our client

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = secrets.token_hex(8)
        self.client_email = f"gateway@{self.project_id}.iam.gserviceaccount.com"

    def service_account(self) -> dict[str, str]:
        """The JSON a Firebase console would give, pointing at this fake's token endpoint."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "token_uri": f"{self.url}/token",
        }

    def _route(self, request: Request) -> Response | Awaitable[Response | None] | None:
        if request.method != "POST":
            return json_response({"error": "method not allowed"}, status=405)
        if request.path == "/token":
            return self._token(request)
        project, sep, verb = request.path.removeprefix("/v1/projects/").partition("/messages:")
        if request.path.startswith("/v1/projects/") and sep and verb == "send" and "/" not in project:
            return self._send(request, project)
        return json_response({"error": "not found"}, status=404)

    def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        assertion = form.get("assertion", "")
        try:
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                raise jwt.InvalidTokenError("grant_type")
            if jwt.get_unverified_header(assertion).get("kid") != self.key_id:
                raise jwt.InvalidTokenError("kid")
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=f"{self.url}/token",
                issuer=self.client_email,
            )
            if claims.get("scope") != SCOPE:
                raise jwt.InvalidTokenError("scope")
        except jwt.InvalidTokenError as exc:
            self.rejected_assertions.append(str(exc))
            return json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        token = "ya29." + secrets.token_urlsafe(24)
        self.issued.append(token)
        return json_response({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _send(self, request: Request, project: str) -> Response | Awaitable[Response | None] | None:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.issued or bearer in self.revoked:
            return _error(401, None, "Request had invalid authentication credentials.")
        if project != self.project_id:
            return _error(403, "SENDER_ID_MISMATCH", "wrong project")
        raw = request.body
        message = json.loads(raw).get("message", {})
        token = message.get("token")
        if not token:
            return _error(400, "INVALID_ARGUMENT", "message.token is required")
        if any(not isinstance(v, str) for v in message.get("data", {}).values()):
            return _error(400, "INVALID_ARGUMENT", "data values must be strings")
        if len(raw) > 4096 + 64:
            return _error(400, "INVALID_ARGUMENT", "Message is too big")
        attempt = self.attempts[token] = self.attempts.get(token, 0) + 1
        fault = self.fault(token, attempt) if self.fault else None
        if fault is not None and fault.delay:
            return after(fault.delay, self._answer, request, message, fault)
        return self._answer(request, message, fault)

    def _answer(self, request: Request, message: dict[str, Any], fault: FcmFault | None) -> Response | None:
        if fault is not None:
            if fault.drop:
                request.transport.abort()
                return None
            if fault.status != 200:
                return _error(fault.status, fault.error_code, fault.message, fault.retry_after)
        self.arrivals.append(time.monotonic())
        self.received.append(message)
        return json_response({"name": f"projects/{self.project_id}/messages/{secrets.token_hex(8)}"})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server, self.url = await serve_http1(self._route, host, port, engine=self.engine)
        return self.url

    def to(self, token: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("token") == token]


def _error(status: int, code: str | None, message: str, retry_after: str | None = None) -> Response:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}] if code else []
    body = {
        "error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "UNKNOWN"), "details": details}
    }
    return json_response(body, status=status, headers={"Retry-After": retry_after} if retry_after else None)
