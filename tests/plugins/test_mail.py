"""The SMTP email channel against a real SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from gateway.testing.smtp import SmtpFake
from plugins.mail import read_token, sign_token
from tests.conftest import make_config
from tests.plugins.tables import attempted, decide


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def smtp(ca: trustme.CA) -> AsyncIterator[SmtpFake]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    async with SmtpFake(tls_context=server_context, require_starttls=True, username="gw", password="pw") as fake:
        yield fake


@pytest.fixture
def mail_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "pw")
    monkeypatch.setenv("TEST_UNSUBSCRIBE_SECRET", "0123456789abcdef")


def mail_config(tmp_path: Path, smtp: SmtpFake, ca: trustme.CA, **extra: Any) -> Any:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = make_config(tmp_path)
    config.channels["email"] = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "starttls",
        "ca_file": str(ca_file),
        "username": "gw",
        "password": {"env": "TEST_SMTP_PASSWORD"},
        "from_address": "news@shop.example",
        "from_name": "Shop",
        "pool_size": 3,
        "unsubscribe": {
            "url": "https://gw.example",
            "secret": {"env": "TEST_UNSUBSCRIBE_SECRET"},
            "mailto": "unsubscribe@shop.example",
        },
        **extra,
    }
    return config


def email_job(addresses: list[str], category: str = "marketing") -> dict[str, Any]:
    return {
        "campaign": "spring",
        "category": category,
        "channels": ["email"],
        "variants": [
            {
                "name": "d",
                "content": {
                    "email": {
                        "subject": "Hello {{ attributes.name | default: 'there' }}",
                        "text": "Plain {{ attributes.name | default: 'there' }}",
                        "html": "<p>Hi {{ attributes.name | default: 'there' }}</p>",
                    }
                },
            }
        ],
        "recipients": [
            {
                "user_id": f"u{i}",
                "email": a,
                "attributes": {"name": f"<N{i}>"},
                "subscriptions": {"email": "subscribed"},
            }
            for i, a in enumerate(addresses)
        ],
    }


async def test_multipart_mail_over_starttls_with_auth(start, tmp_path, smtp, ca, mail_env) -> None:
    running = await start(mail_config(tmp_path, smtp, ca))
    _, body, _ = await running.post(email_job(["ana@example.com", "ben@example.com"]))
    done = await running.wait(body["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"], [d.get("detail") for d in done["decisions"]]
    assert all(r.tls for r in smtp.received)  # STARTTLS happened before the mail
    (msg,) = smtp.to("ana@example.com")
    assert msg["From"] == "Shop <news@shop.example>" and msg["Subject"] == "Hello <N0>"
    assert msg["Message-ID"] == f"<{body['job_id']}.0.email.0@shop.example>"
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().strip() == "Plain <N0>"
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hi &lt;N0&gt;</p>"  # escaped
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = [part.strip(" <>") for part in msg["List-Unsubscribe"].split(",")]
    assert link.startswith("https://gw.example/v1/unsubscribe/")
    assert mailto == "mailto:unsubscribe@shop.example?subject=unsubscribe"
    assert read_token(b"0123456789abcdef", link.rsplit("/", 1)[1]) == ("ana@example.com", "spring")


async def test_transactional_mail_has_no_unsubscribe_headers(start, tmp_path, smtp, ca, mail_env) -> None:
    running = await start(mail_config(tmp_path, smtp, ca))
    _, body, _ = await running.post(email_job(["ana@example.com"], category="transactional"))
    await running.wait(body["job_id"])
    (msg,) = smtp.to("ana@example.com")
    assert "List-Unsubscribe" not in msg


REPLIES = [
    ("451 4.3.0 try again later", "deferred", "retrying", 2),
    ("452 4.2.2 mailbox full", "deferred", "retrying", 2),
    ("550 5.1.1 no such user", "invalid_token", "smtp_550", 1),
    ("553 5.1.3 bad address", "invalid_token", "smtp_553", 1),
    ("554 5.7.1 rejected as spam", "failed", "smtp_554", 1),
    ("552 5.3.4 message too big", "failed", "smtp_552", 1),
]


@pytest.mark.parametrize(("reply", "outcome", "reason", "attempts"), REPLIES, ids=[r[0][:3] for r in REPLIES])
async def test_reply_table(start, tmp_path, smtp, ca, mail_env, reply, outcome, reason, attempts) -> None:
    smtp.fault = lambda address, attempt: reply
    from gateway.clock import FakeClock

    running = await start(mail_config(tmp_path, smtp, ca), clock=FakeClock(1_800_000_000))
    decision = await decide(running, email_job(["ana@example.com"]))
    assert (decision["outcome"], decision["reason"]) == (outcome, reason)
    assert attempted(smtp.attempts["ana@example.com"], attempts, outcome)
    if outcome == "invalid_token":
        assert decision["invalid_tokens"] == ["ana@example.com"]


async def test_transient_then_accepted(start, tmp_path, smtp, ca, mail_env) -> None:
    smtp.fault = lambda address, attempt: "451 4.3.0 later" if attempt == 1 else None
    running = await start(mail_config(tmp_path, smtp, ca))
    _, body, _ = await running.post(email_job(["ana@example.com"]))
    assert (await running.wait(body["job_id"]))["decisions"][0]["outcome"] == "sent"
    assert len(smtp.to("ana@example.com")) == 1


async def test_reconnects_after_the_server_drops_connections(start, tmp_path, smtp, ca, mail_env) -> None:
    running = await start(mail_config(tmp_path, smtp, ca))
    _, first, _ = await running.post(email_job(["a@example.com", "b@example.com", "c@example.com"]))
    await running.wait(first["job_id"])
    await smtp.stop()  # every pooled connection dies
    await smtp.start()  # same port
    _, second, _ = await running.post(email_job(["d@example.com", "e@example.com"]))
    done = await running.wait(second["job_id"])
    assert [d["outcome"] for d in done["decisions"]] == ["sent", "sent"], [d.get("detail") for d in done["decisions"]]


async def test_one_click_unsubscribe_suppresses_later_marketing(start, tmp_path, smtp, ca, mail_env) -> None:
    running = await start(mail_config(tmp_path, smtp, ca))
    _, body, _ = await running.post(email_job(["ana@example.com"]))
    await running.wait(body["job_id"])
    link = smtp.to("ana@example.com")[0]["List-Unsubscribe"].split(",")[0].strip(" <>")
    path = link.removeprefix("https://gw.example")
    async with aiohttp.ClientSession(running.server.url) as anon:  # no API key: recipients click it
        async with anon.get(path) as r:
            assert r.status == 200 and "<form" in await r.text()
        async with anon.get("/v1/jobs/x") as r:
            assert r.status == 401
        async with anon.post(path[:-3] + "abc", data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 404  # a forged token
        async with anon.post(path, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    _, later, _ = await running.post(email_job(["Ana@Example.com", "ben@example.com"]))
    decisions = (await running.wait(later["job_id"]))["decisions"]
    assert (decisions[0]["outcome"], decisions[0]["reason"]) == ("suppressed", "opted_out")
    assert decisions[1]["outcome"] == "sent"
    _, receipt, _ = await running.post(email_job(["ana@example.com"], category="transactional"))
    assert (await running.wait(receipt["job_id"]))["decisions"][0]["outcome"] == "sent"  # receipts still go
    async with running.http.delete("/v1/opt-outs/ana@example.com") as r:
        assert r.status == 204  # upstream has a new subscription state
    _, again, _ = await running.post(email_job(["ana@example.com"]))
    assert (await running.wait(again["job_id"]))["decisions"][0]["outcome"] == "sent"


async def test_a_refused_envelope_leaves_the_connection_clean_for_the_next(start, tmp_path, smtp, ca, mail_env) -> None:
    """One connection (pool_size 1): the server refuses the first address; the next mail
    on that connection goes out (a client back in the pool with an open envelope got
    `503 nested MAIL command` for every later mail)."""
    smtp.fault = lambda address, attempt: "501 5.1.3 bad destination" if address.startswith("bad") else None
    running = await start(mail_config(tmp_path, smtp, ca, pool_size=1))
    _, body, _ = await running.post(
        email_job(
            ["bad@example.com", "ana@example.com", "bad2@example.com", "ben@example.com"], category="transactional"
        )
    )
    decisions = (await running.wait(body["job_id"]))["decisions"]
    assert [(d["outcome"], d.get("reason")) for d in decisions] == [
        ("failed", "smtp_501"),
        ("sent", None),
        ("failed", "smtp_501"),
        ("sent", None),
    ]
    assert sorted(a for mail in smtp.received for a in mail.rcpt_tos) == ["ana@example.com", "ben@example.com"]


async def test_addresses_outside_ascii_need_smtputf8(start, tmp_path, ca, mail_env) -> None:
    """Without `smtputf8` such an address is a 400 naming it; with it, it goes out with
    SMTPUTF8 to a relay that offers it, and fails alone (permanently) at one that does not.
    Domains always go out in their ASCII form."""
    job = email_job(["ü@example.com", "ana@bücher.de"], category="transactional")
    async with SmtpFake(smtputf8=True) as relay:
        running = await start(mail_config(tmp_path, relay, ca, security="none", username=None, password=None))
        status, body, _ = await running.post(job)
        assert status == 400 and body["path"] == "$.recipients[0].email" and "SMTPUTF8" in body["message"]
        await running.server.stop()
        running = await start(
            mail_config(tmp_path, relay, ca, security="none", username=None, password=None, smtputf8=True)
        )
        _, body, _ = await running.post(job)
        assert [d["outcome"] for d in (await running.wait(body["job_id"]))["decisions"]] == ["sent", "sent"]
        assert sorted(a for mail in relay.received for a in mail.rcpt_tos) == ["ana@xn--bcher-kva.de", "ü@example.com"]
    async with SmtpFake() as plain:  # the config says SMTPUTF8, the relay does not offer it
        running = await start(
            mail_config(tmp_path, plain, ca, security="none", username=None, password=None, smtputf8=True)
        )
        _, body, _ = await running.post(job)
        decisions = (await running.wait(body["job_id"]))["decisions"]
        assert [(d["outcome"], d.get("reason")) for d in decisions] == [("failed", "invalid_request"), ("sent", None)]


@pytest.mark.parametrize(
    "address",
    ["Ana <ana@example.com>", "(x)ana@example.com", "ana@example.com, ben@example.com", "ana@example.com\x00"],
)
async def test_an_address_smtp_would_read_differently_is_a_400(start, tmp_path, smtp, ca, mail_env, address) -> None:
    """An opt-out is compared with the address SMTP is given: forms that SMTP would read
    as another address (a display name, a comment, two addresses) cannot get past one."""
    running = await start(mail_config(tmp_path, smtp, ca))
    status, body, _ = await running.post(email_job([address.replace("\\x00", "\x00")]))
    assert status == 400 and body["path"] == "$.recipients[0].email", body


def test_tokens_are_signed() -> None:
    token = sign_token(b"k", "ana@example.com", "spring")
    assert read_token(b"k", token) == ("ana@example.com", "spring")
    assert read_token(b"other", token) is None
    assert read_token(b"k", token.replace(".", ".x")) is None
    assert read_token(b"k", "garbage") is None


async def test_a_server_slower_than_the_timeout_is_transient(start, tmp_path, smtp, ca, mail_env) -> None:
    from gateway.clock import FakeClock

    smtp.latency = 0.5
    running = await start(mail_config(tmp_path, smtp, ca, timeout="150ms"), clock=FakeClock(1_800_000_000))
    decision = await decide(running, email_job(["ana@example.com"]))
    assert (decision["outcome"], decision["reason"]) == ("deferred", "retrying")
    assert "smtp_error" in decision["detail"] or "disconnected" in decision["detail"]
