"""Email addresses, parsed once the way SMTP will read them.

A job's `email` is one addr-spec: no display name (`Ana <ana@x>`), no comment
(`(x)ana@x`), no second address, no control or space characters, a dot-atom local part of
at most 64 octets and a domain of LDH labels after IDNA (`bücher.de` is sent as
`xn--bcher-kva.de`). A local part outside ASCII is RFC 6531 (SMTPUTF8): only a relay that
offers it can take it, which the email channel checks against its config.

Every use of the address goes through `parse_email`: the copy SMTP is given and the key
one-click opt-outs are compared by are the same string, so `Optout<optout@example.com>`
cannot slip past an opt-out of `optout@example.com`.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import idna

# RFC 5322 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")


class AddressError(ValueError):
    """Not an address SMTP would take as it stands; the message says what is wrong."""


class EmailAddress(NamedTuple):
    """A parsed address."""

    address: str  # what SMTP is given: the domain in its ASCII form
    key: str  # what opt-outs compare: the address in lower case
    utf8: bool  # the local part needs SMTPUTF8 (RFC 6531)


@functools.lru_cache(maxsize=65536)
def parse_email(raw: str) -> EmailAddress:
    """The address as SMTP will read it, or AddressError."""
    if _CONTROL.search(raw):
        raise AddressError("expected one address with no spaces or control characters")
    local, at, domain = raw.rpartition("@")
    if not at or not local or not domain:
        raise AddressError("expected an address like name@example.com")
    if local.startswith('"'):
        raise AddressError("quoted local parts are not supported")
    if any(not _ATOM.fullmatch(atom) for atom in local.split(".")):
        raise AddressError(
            "expected one address like name@example.com: no display name, comment, angle brackets or empty part"
        )
    if len(local.encode()) > 64:
        raise AddressError("the part before @ is longer than 64 bytes")
    ascii_domain = _domain(domain)
    address = f"{local}@{ascii_domain}"
    if len(address.encode()) > 254:
        raise AddressError("longer than 254 bytes")
    return EmailAddress(address, address.lower(), not local.isascii())


def _domain(domain: str) -> str:
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode()
    except (idna.IDNAError, UnicodeError):
        raise AddressError(f"the domain {domain[:80]!r} is not a valid host name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise AddressError(f"the domain {domain[:80]!r} is not a valid host name")
    return ascii_domain


def tenant_key(tenant: str, key: str) -> str:
    """A key of one tenant's (an opt-out, a capped user): the `default` tenant's as it is,
    others' prefixed with their name and a separator no address or user id holds."""
    return key if tenant == "default" else f"{tenant}\x1f{key}"


def opt_out_key(raw: str) -> str:
    """What one-click opt-outs are stored and compared by; a string that does not parse
    is compared as it is, lower-cased (it is never sent to)."""
    try:
        return parse_email(raw).key
    except AddressError:
        return raw.lower()
