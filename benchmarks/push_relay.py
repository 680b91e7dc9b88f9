"""The peer beside the one-message benchmark: a plain push gateway, run in the same run.

What a push gateway such as Sygnal does for one notification and no more: an aiohttp
server on uvloop takes a POST, decodes its JSON, sends one APNs notification per device
with aioapns (the library Sygnal uses), and answers 200 once APNs has answered, with the
tokens it rejected. Nothing is stored, there are no templates or policy, and no line is
logged per request (Sygnal logs one). So it is a lower bound of such a gateway's CPU, on
this machine at this hour: `transactional.py` starts it against the same fake APNs
process with the same POSTs, and reports the gateway's CPU per message beside it (this
VM's speed varies two- to three-fold within a day, so figures of different runs do not
compare).

    python benchmarks/push_relay.py   # started by transactional.py; BENCH_RELAY holds the fake's facts (JSON)
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import serve_jobs


def _client(info: dict[str, Any]) -> Any:
    from aioapns import APNs

    context = ssl.create_default_context(cafile=info["ca_file"])
    context.set_alpn_protocols(["h2"])
    client = APNs(
        key=info["key_pem"], key_id=info["key_id"], team_id=info["team_id"], topic=info["topic"], ssl_context=context
    )
    # aioapns has no endpoint option: the fake's address goes on its protocol class (as
    # gateway/transport/library.py does).
    pool = client.pool
    pool.protocol_class = type("Fake", (pool.protocol_class,), {"APNS_SERVER": "127.0.0.1", "APNS_PORT": info["port"]})
    return client


async def serve() -> None:
    from aioapns import NotificationRequest
    from aiohttp import web

    client = _client(json.loads(os.environ["BENCH_RELAY"]))

    async def notify(request: web.Request) -> web.Response:
        job = json.loads(await request.read())
        push = job["variants"][0]["content"]["push"]
        alert = {"aps": {"alert": {"title": push["title"], "body": push["body"]}}}
        rejected = []
        for recipient in job["recipients"]:
            for device in recipient["devices"]:
                result = await client.send_notification(
                    NotificationRequest(device_token=device["token"], message=alert)
                )
                if not result.is_successful:
                    rejected.append(device["token"])
        return web.json_response({"rejected": rejected})

    await serve_jobs(notify, "relay")


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
