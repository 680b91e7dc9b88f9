"""RFC 5322 / MIME messages for the email channel, composed straight to bytes.

What `EmailMessage` under the default policy would produce for the channel's messages, at a
fraction of the cost: header values that are not ASCII become RFC 2047 encoded words,
long headers are folded, CR and LF in a value (rendered from templates) become spaces so
they cannot start a header of their own, and the text and HTML parts are UTF-8 in
quoted-printable (7-bit safe for any relay, lines under 78 characters). With HTML the
message is multipart/alternative, text first, as mail clients expect.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from email.header import Header

_LINE_BREAKS = re.compile(r"[\r\n]+")
# Other control characters in a rendered header value (a template's data) are dropped:
# NUL, vertical tab, form feed... have no place in a header, and some relays choke on them.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Headers that hold addresses: only their display names may be encoded, and formataddr()
# has already done that; the rest of the value must stay as it is.
_ADDRESS_HEADERS = frozenset({"from", "to", "reply-to", "cc", "bcc", "sender"})


def compose(headers: Sequence[tuple[str, str]], text: str, html: str | None, boundary_seed: str) -> bytes:
    lines = [_header(name, value) for name, value in headers]
    lines.append("MIME-Version: 1.0")
    if html is None:
        lines += _part_headers("plain")
        return _join(lines, _qp(text))
    boundary = "==gw" + hashlib.blake2b(boundary_seed.encode(), digest_size=12).hexdigest() + "=="
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    out = _join(lines, b"")
    for subtype, body in (("plain", text), ("html", html)):
        # the CRLF before a boundary belongs to the boundary, not to the part's body
        out += f"--{boundary}\r\n".encode() + _join(_part_headers(subtype), _qp(body)) + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _header(name: str, value: str) -> str:
    value = _CONTROLS.sub("", _LINE_BREAKS.sub(" ", value)).replace("\t", " ")
    if name.lower() in _ADDRESS_HEADERS or (value.isascii() and len(name) + len(value) < 76):
        return f"{name}: {value}"
    # Encoded words (or folding, for long ASCII values) as email.header does it
    return f"{name}: " + Header(value, "utf-8" if not value.isascii() else "us-ascii", header_name=name).encode(
        linesep="\r\n"
    )


def _part_headers(subtype: str) -> list[str]:
    return [f'Content-Type: text/{subtype}; charset="utf-8"', "Content-Transfer-Encoding: quoted-printable"]


def _qp(body: str) -> bytes:
    if not body.endswith("\n"):
        body += "\n"  # as EmailMessage.set_content does
    data = body.replace("\r\n", "\n").encode()
    encoded = binascii.b2a_qp(data)  # soft line breaks keep every line under 77 characters
    return encoded.replace(b"\n", b"\r\n")


def _join(lines: list[str], body: bytes) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
