"""What the HTTP/2 channels (APNs through aioapns and h2) and the APNs fake share."""

from __future__ import annotations

from hpack import Encoder


class PlainEncoder(Encoder):
    """HPACK with header strings as plain literals. h2 Huffman-codes every string it has
    not indexed, in pure Python: APNs's per-request path and apns-id cost ~19% of the
    channel's CPU, client and server, in the APNs benchmark's profile. RFC 7541 leaves
    Huffman coding to the sender, and every decoder takes either form."""

    def encode(self, headers, huffman=False):  # type: ignore[no-untyped-def]
        return super().encode(headers, huffman=False)
