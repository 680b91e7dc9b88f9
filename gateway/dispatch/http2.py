"""What the HTTP/2 channels (APNs through aioapns and h2) and the APNs fake share."""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Encoder, NeverIndexedHeaderTuple


class PlainEncoder(Encoder):
    """HPACK with header strings as plain literals. h2 Huffman-codes every string it has
    not indexed, in pure Python: APNs's per-request path and apns-id cost ~19% of the
    channel's CPU, client and server, in the APNs benchmark's profile. RFC 7541 leaves
    Huffman coding to the sender, and every decoder takes either form.

    Headers named in `unindexed` (values that differ on every request) stay out of the
    dynamic table: indexing them only evicted the headers that do repeat."""

    def __init__(self, unindexed: Iterable[str] = ()):
        super().__init__()
        names = {name.lower() for name in unindexed}
        self.unindexed = frozenset(names | {name.encode() for name in names})

    def encode(self, headers, huffman=False):  # type: ignore[no-untyped-def]
        if self.unindexed:
            headers = [NeverIndexedHeaderTuple(h[0], h[1]) if h[0] in self.unindexed else h for h in headers]
        return super().encode(headers, huffman=False)
