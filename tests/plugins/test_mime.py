"""The email channel's MIME composer: what it writes, Python's own parser reads back."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.mime import compose


def parse(raw: bytes) -> EmailMessage:
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # RFC 5322 hard limit
    assert raw.isascii()  # 7-bit clean for any relay
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_multipart_alternative_text_first() -> None:
    msg = parse(
        compose(
            [("From", "Shop <news@shop.example>"), ("To", "ana@example.com"), ("Subject", "Grüße, Ana 🎉")],
            "Hi Ana,\n.a line starting with a dot",
            "<p>Hi Ana</p>",
            "job.0.email.0",
        )
    )
    assert msg["Subject"] == "Grüße, Ana 🎉" and msg["From"] == "Shop <news@shop.example>"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg.get_body(("plain",)).get_content() == "Hi Ana,\r\n.a line starting with a dot\r\n"
    assert msg.get_body(("html",)).get_content() == "<p>Hi Ana</p>\r\n"
    assert not msg.defects and all(not p.defects for p in msg.iter_parts())


def test_a_line_break_in_a_header_value_cannot_add_a_header() -> None:
    msg = parse(compose([("Subject", "Hi\r\nBcc: victim@example.com")], "x", None, "s"))
    assert msg["Bcc"] is None and msg["Subject"] == "Hi Bcc: victim@example.com"
    assert msg.get_content_type() == "text/plain"


@settings(max_examples=150, deadline=None)
@given(subject=st.text(max_size=200), text=st.text(max_size=2000), html=st.none() | st.text(max_size=500))
def test_any_subject_and_body_read_back_the_same(subject: str, text: str, html: str | None) -> None:
    msg = parse(compose([("From", "a@example.com"), ("Subject", subject)], text, html, "seed"))
    # Line breaks in a header value became one space; the parser unfolds folded lines and
    # trims the whitespace around them, as it does for EmailMessage's own output.
    # Other control characters are dropped (a rendered value must not smuggle them in).
    expected = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "", re.sub(r"[\r\n]+", " ", subject))
    assert msg["Subject"].split() == expected.replace("\t", " ").split()

    def lines(value: str) -> str:  # a body ends with a line break; CRLF and LF are one line break
        return (value if value.endswith("\n") else value + "\n").replace("\r\n", "\n")

    assert lines(msg.get_body(("plain",)).get_content()) == lines(text)
    if html is not None:
        assert lines(msg.get_body(("html",)).get_content()) == lines(html)
