"""Fitting rendered push content into a channel's payload limit.

The body is shortened, on a character boundary, with an ellipsis, until the provider
payload fits; the decision says so. When even an empty body does not fit (the title or
data are too large), the delivery fails with `payload_too_large` before any provider
round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from gateway.model.job import PushContent

ELLIPSIS = "\u2026"


class PayloadTooLarge(Exception):
    pass


def fit_push(content: PushContent, limit: int, size: Callable[[PushContent], int]) -> tuple[PushContent, str | None]:
    """(content that fits, a note when the body was shortened); raises PayloadTooLarge."""
    total = size(content)
    if total <= limit:
        return content, None
    body = content.body or ""
    if size(msgspec.structs.replace(content, body=ELLIPSIS if body else None)) > limit:
        raise PayloadTooLarge(f"{total} bytes, the limit is {limit}; the title or data alone do not fit")
    lo, hi = 0, len(body) - 1  # the longest prefix that fits, with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(msgspec.structs.replace(content, body=body[:mid].rstrip() + ELLIPSIS)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    fitted = msgspec.structs.replace(content, body=body[:lo].rstrip() + ELLIPSIS)
    return fitted, f"body shortened from {len(body)} to {len(fitted.body or '')} characters to fit {limit} bytes"
