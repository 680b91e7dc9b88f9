"""docs/upstream.md stays true: its verification snippet verifies what the gateway signs,
and every route of the API is in it, in the README's table or public (and in OpenAPI)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.intake.api import make_app
from gateway.intake.openapi import openapi_spec
from gateway.testing import new_secret
from gateway.transport.webhooks import webhook_headers, webhook_key

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "upstream.md").read_text()


def test_the_documented_verification_accepts_the_gateways_signature_and_nothing_else() -> None:
    snippet = re.search(r"<!-- verify:[^>]*-->\n```python\n(.*?)```", DOC, re.S)
    assert snippet, "the verification snippet is gone from docs/upstream.md"
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)
    verify = namespace["verify"]
    secret = new_secret()
    body = b'{"id":"evt_1","type":"job.completed","created_at":"2026-12-01T00:00:00Z","data":{}}'
    headers = dict(webhook_headers(webhook_key(secret), "evt_1", int(time.time()), body))
    assert verify(secret, headers, body)  # type: ignore[operator]
    assert not verify(secret, headers, body.replace(b"completed", b"cancelled"))  # type: ignore[operator]
    assert not verify(new_secret(), headers, body)  # type: ignore[operator]
    stale = dict(webhook_headers(webhook_key(secret), "evt_1", int(time.time()) - 3600, body))
    assert not verify(secret, stale, body)  # type: ignore[operator]


def test_every_route_is_documented_and_in_openapi() -> None:
    app = make_app(Gateway(GatewayConfig()), [])
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method not in ("HEAD", "*")}  # type: ignore[union-attr]
    readme = (REPO / "README.md").read_text()
    spec = openapi_spec()["paths"]
    for method, path in routes:
        assert method.lower() in spec.get(path, {}), f"{method} {path} is not in /openapi.json"
        if path.startswith("/v1/"):
            shown = re.sub(r"\{(\w+)\}", lambda m: "{id}" if m.group(1) == "job_id" else m.group(0), path)
            assert f"`{method} {shown}" in DOC or f"`{method} {path}" in readme, f"{method} {path} is not documented"
