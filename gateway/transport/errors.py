"""What can go wrong with a request, kept apart by whose fault it is (as httpx does):

RequestError (ValueError)   we could not build it (a header value with a line break or
                            outside latin-1, a bad target): permanent for that message
                            alone, and no fault of the provider
OSError                     the provider or the network: transient, and counted
                            against that provider (connection refused, reset, TLS)
 +-- HttpError              an HTTP/1.1 response that could not be read
 +-- Http2Error             an HTTP/2 connection or stream that failed
TimeoutError                no answer in time: transient
"""

from __future__ import annotations

import re


class RequestError(ValueError):
    """The request cannot be built from what we were given: our side, not the provider's."""


class AddressNotAllowed(RequestError):
    """The host resolves only to addresses the operator does not allow (loopback,
    private, link-local): the request is not made."""


# RFC 9110 5.1: a field name is a token; 5.5: a value is visible characters, spaces and
# tabs, and obs-text (0x80-0xFF) that some servers still take.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def check_header(name: str, value: str) -> None:
    """Raise RequestError for a header that would break the request (or inject another)."""
    if not _TOKEN.fullmatch(name):
        raise RequestError(f"header name {name[:40]!r} is not a token")
    if not _FIELD_VALUE.fullmatch(value):
        raise RequestError(f"header {name} has a control character or a character outside latin-1")
