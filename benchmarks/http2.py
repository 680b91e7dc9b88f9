"""HTTP/2 alone, per APNs request: our connection (`gateway.transport.http2`, the APNs
plugin's client and its fake's server) against the h2 library (the reference), in the same
process, with no sockets, TLS or gateway around either.

A client connection sends the plugin's headers and a 100-byte payload; a server connection
reads them and answers 200 with the apns-id, which the client reads. Each side is timed on
its own. h2 is configured as the plugin and its fake were when they used it (plain HPACK
strings, per-request headers unindexed, our own outgoing headers unchecked): its figures
are what the channel would cost on h2 at best.

    .venv/bin/python benchmarks/http2.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.testing._http2 import Http2ServerConnection, MemoryTransport  # noqa: E402
from gateway.transport.http2 import Http2ClientConnection, Http2Pool, Response, Stream  # noqa: E402

AUTHORIZATION = "bearer " + "e" * 240  # an ES256 provider token is about this long
PAYLOAD = json.dumps({"aps": {"alert": {"title": "Hi", "body": "x" * 60}}}).encode()


def _headers(n: int, apns_id: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", f"/3/device/{n:064x}"),
        ("authorization", AUTHORIZATION),
        ("apns-topic", "com.shop.app"),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
        ("apns-id", apns_id),
        ("apns-expiration", str(1_800_000_000 + n)),
    ]


class _Answers:
    """Where the client's streams settle (in the plugin: a `Batch` of its requests)."""

    def __init__(self) -> None:
        self.status: dict[int, int] = {}

    def settle(self, stream: Stream, outcome: Response | Exception) -> None:
        self.status[stream.index] = outcome.status if isinstance(outcome, Response) else 0


async def ours(requests: int) -> dict[str, float]:
    pool = Http2Pool("api.push.apple.com", volatile=(b":path", b"apns-id", b"apns-expiration"))
    client, to_server = Http2ClientConnection(pool), MemoryTransport()

    def answer(
        connection: Http2ServerConnection, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        connection.respond(stream_id, [(b":status", b"200"), (b"apns-id", dict(headers)[b"apns-id"])], None)

    server, to_client = Http2ServerConnection(answer, volatile=(b"apns-id",)), MemoryTransport()
    client.connection_made(to_server)  # type: ignore[arg-type]
    server.connection_made(to_client)  # type: ignore[arg-type]
    server.data_received(to_server.take())
    client.data_received(to_client.take())
    server.data_received(to_server.take())
    answers = _Answers()
    client_s = server_s = 0.0
    for n in range(requests):
        headers = [(k.encode(), v.encode()) for k, v in _headers(n, str(uuid.uuid4()))]
        started = time.process_time()
        client.start(headers, PAYLOAD, answers, n)  # type: ignore[arg-type]
        client.flush()  # what the event loop's next turn does (with every request started in this one)
        wire = to_server.take()
        middle = time.process_time()
        server.data_received(wire)
        reply = to_client.take()
        done = time.process_time()
        client.data_received(reply)
        client_s += time.process_time() - done + middle - started
        server_s += done - middle
        assert answers.status[n] == 200
    return {
        "client_us_per_request": round(client_s / requests * 1e6, 1),
        "server_us_per_request": round(server_s / requests * 1e6, 1),
    }


def reference(requests: int) -> dict[str, float]:
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import RequestReceived, StreamEnded
    from hpack import Encoder, NeverIndexedHeaderTuple

    class PlainEncoder(Encoder):  # as the plugin and the fake configured h2
        def __init__(self, unindexed: tuple[str, ...]):
            super().__init__()
            self.unindexed = frozenset(unindexed) | {name.encode() for name in unindexed}

        def encode(self, headers, huffman=False):  # type: ignore[no-untyped-def]
            headers = [NeverIndexedHeaderTuple(*h) if h[0] in self.unindexed else h for h in headers]
            return super().encode(headers, huffman=False)

    client = H2Connection(config=H2Configuration(client_side=True, validate_outbound_headers=False))
    client.encoder = PlainEncoder((":path", "apns-id", "apns-expiration"))
    server = H2Connection(
        config=H2Configuration(client_side=False, header_encoding="utf-8", validate_outbound_headers=False)
    )
    server.encoder = PlainEncoder(("apns-id",))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client_s = server_s = 0.0
    for n in range(requests):
        headers = _headers(n, str(uuid.uuid4()))
        started = time.process_time()
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, headers)
        client.send_data(stream_id, PAYLOAD, end_stream=True)
        wire = client.data_to_send()
        middle = time.process_time()
        for event in server.receive_data(wire):
            if isinstance(event, RequestReceived):
                received = dict(event.headers)
            elif isinstance(event, StreamEnded):
                server.send_headers(
                    event.stream_id, [(":status", "200"), ("apns-id", received["apns-id"])], end_stream=True
                )
        reply = server.data_to_send()
        if n % 64 == 0:  # the window the fake acknowledges as it reads
            server.acknowledge_received_data(len(PAYLOAD) * 64, stream_id)
        done = time.process_time()
        client.receive_data(reply)
        client_s += time.process_time() - done + middle - started
        server_s += done - middle
    return {
        "client_us_per_request": round(client_s / requests * 1e6, 1),
        "server_us_per_request": round(server_s / requests * 1e6, 1),
    }


def run(requests: int = 20_000) -> dict[str, object]:
    lean = asyncio.run(ours(requests))
    result: dict[str, object] = {"requests": requests, "ours": lean}
    try:
        h2 = reference(requests)
    except ImportError:  # h2 comes with the test and bench extras
        return result
    result["h2"] = h2
    result["ratio_client"] = round(h2["client_us_per_request"] / lean["client_us_per_request"], 1)
    result["ratio_server"] = round(h2["server_us_per_request"] / lean["server_us_per_request"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    print(json.dumps(run(parser.parse_args().requests), indent=2))


if __name__ == "__main__":
    main()
