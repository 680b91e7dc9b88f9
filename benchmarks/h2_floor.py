"""The floor under the APNs channel: CPU per request of the h2 library alone, as the APNs
plugin and its fake use it, with no sockets, TLS, aioapns or gateway around it.

A client connection (aioapns's settings plus the plugin's: plain HPACK strings, per-request
headers unindexed, outgoing headers unchecked) sends the plugin's headers and a 100-byte
payload; a server connection (the fake's settings) reads them and answers 200 with an
apns-id, which the client reads. Both sides in one process, timed per side.

    .venv/bin/python benchmarks/h2_floor.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from h2.events import RequestReceived, StreamEnded  # noqa: E402

from gateway.dispatch.http2 import PlainEncoder  # noqa: E402

AUTHORIZATION = "bearer " + "e" * 240  # an ES256 provider token is about this long


def run(requests: int = 20_000) -> dict[str, float]:
    client = H2Connection(config=H2Configuration(client_side=True, validate_outbound_headers=False))
    client.encoder = PlainEncoder(unindexed=(":path", "apns-id", "apns-expiration"))
    server = H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8",
                                                 validate_outbound_headers=False))
    server.encoder = PlainEncoder(unindexed=("apns-id",))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    payload = json.dumps({"aps": {"alert": {"title": "Hi", "body": "x" * 60}}}).encode()
    client_s = server_s = 0.0
    for n in range(requests):
        started = time.process_time()
        stream_id = client.get_next_available_stream_id()
        apns_id = str(uuid.uuid4())
        client.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "https"), (":path", f"/3/device/{n:064x}"),
            ("host", "api.push.apple.com"), ("apns-id", apns_id), ("apns-topic", "com.shop.app"),
            ("apns-expiration", str(1_800_000_000 + n)), ("apns-priority", "10"), ("apns-push-type", "alert"),
            ("authorization", AUTHORIZATION)])
        client.send_data(stream_id, payload, end_stream=True)
        wire = client.data_to_send()
        middle = time.process_time()
        for event in server.receive_data(wire):
            if isinstance(event, RequestReceived):
                headers = dict(event.headers)
            elif isinstance(event, StreamEnded):
                server.send_headers(event.stream_id, [(":status", "200"), ("apns-id", headers["apns-id"])],
                                    end_stream=True)
        answer = server.data_to_send()
        if n % 64 == 0:  # the window the fake acknowledges as it reads
            server.acknowledge_received_data(len(payload) * 64, stream_id)
        done = time.process_time()
        client.receive_data(answer)
        client_s += time.process_time() - done + middle - started
        server_s += done - middle
    return {"requests": requests, "client_us_per_request": round(client_s / requests * 1e6, 1),
            "server_us_per_request": round(server_s / requests * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    print(json.dumps(run(parser.parse_args().requests), indent=2))


if __name__ == "__main__":
    main()
