"""Hostile values for the fuzzers: strings a careless or malicious upstream sends, values
of every JSON shape, and valid jobs with one field replaced by such a value. Shared by
the HTTP fuzzer, the job-field fuzzer and the isolation property test."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import strategies as st

from gateway.server import start_server

# `make test` runs each fuzzer for a few seconds; GATEWAY_FUZZ_SCALE=100 runs a hundred
# times as many examples (the long runs the issues ask for before resolving them).
SCALE = max(1, int(__import__("os").environ.get("GATEWAY_FUZZ_SCALE", "1")))

# Strings that broke something once, or that every parser should be made to meet.
NASTY = [
    "",
    " ",
    "\t\n",
    "\u00a0",
    "\x00",
    "\x0b\x0c",
    "\r\nBcc: victim@example.com",
    "ü@example.com",
    "a\x00@example.com",
    "Optout<optout@example.com>",
    "(x)optout@example.com",
    "optout@example.com, other@example.com",
    '"quoted"@example.com',
    "a@bücher.de",
    "a@[127.0.0.1]",
    "a@localhost",
    "America",
    "posix/Europe/Paris",
    "right/UTC",
    "Europe/Paris" + "/x" * 200,
    "x" * 300,
    "../../etc/passwd",
    "セール",
    "🎉" * 40,
    "\ud800",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59Z",
    "2026-11-28T12:00:00",
    "24:00",
    "-1",
    "1e999",
    "NaN",
    "https://u:p@push.example.net/x",
    "https://127.0.0.1:22/",
    "http://push.example.net/x",
    "https://[::1/",
    "https://push.example.net:99999/",
    "{{ x | plus: true }}",
    "{% include 'x' %}",
    "{% render '/etc/passwd' %}",
    "{{ items | compact: 'sku' }}",
    "{% for i in (1..3000000) %}{% endfor %}",
    "{{ 'x' | append: x }}",
    "{% if %}",
    "{{",
    "{%",
    "}}",
    "{% raw %}",
]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(NASTY),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
hostile_string = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of a JSON document."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*prefix, i))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(document)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def mutated(document: Any) -> st.SearchStrategy[Any]:
    """The document with one node (anywhere) replaced by a hostile value, or with a key
    added where unknown keys are refused."""
    every = paths(document)
    return st.one_of(
        st.builds(lambda p, v: replaced(document, p, v), st.sampled_from(every), json_value | hostile_string),
        st.builds(
            lambda p, k, v: _with_key(document, p, k, v),
            st.sampled_from([p for p in every if isinstance(_at(document, p), dict)]),
            st.text(min_size=1, max_size=10),
            json_value,
        ),
    )


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def _with_key(document: Any, path: tuple[Any, ...], key: str, value: Any) -> Any:
    out = copy.deepcopy(document)
    _at(out, path)[key] = value
    return out


class GatewayThread:
    """A gateway serving on loopback from its own thread and event loop, with whatever
    `setup` (run first, in that loop) starts beside it; requests are plain blocking
    sockets, so a sync hypothesis test can drive it."""

    def __init__(self, make_config: Callable[[Any], Any], setup: Callable[[], Awaitable[Any]] | None = None):
        self.make_config = make_config
        self.setup = setup
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        self.context: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        if self.setup is not None:
            self.context = self.loop.run_until_complete(self.setup())
        self.server = self.loop.run_until_complete(start_server(self.make_config(self.context)))
        self.url = self.server.url
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        assert self.ready.wait(30), "the gateway did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        if self.context is not None and hasattr(self.context, "stop"):
            asyncio.run_coroutine_threadsafe(self.context.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def run(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        """Run a coroutine in the gateway's loop (to read its state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def send(self, raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
        """Raw bytes in (with `Connection: close`); (status or None when the server closed
        without an answer, headers, body) out."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        if not data:
            return None, {}, b""
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int | None, dict[str, str], bytes]:
        lines = [
            f"{method} {target} HTTP/1.1",
            "Host: 127.0.0.1",
            "Connection: close",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        return self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def json(self, method: str, target: str, body: Any = None, key: str | None = None) -> tuple[int | None, Any]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        status, _, answer = self.request(method, target, raw, headers)
        return status, json.loads(answer) if answer else None
