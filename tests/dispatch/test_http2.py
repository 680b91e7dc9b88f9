"""PlainEncoder: HPACK header blocks without Huffman coding, readable by any decoder."""

from __future__ import annotations

from hpack import Decoder, Encoder
from hypothesis import given
from hypothesis import strategies as st

from gateway.dispatch.http2 import PlainEncoder

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@given(st.lists(st.lists(st.tuples(names, values), min_size=1, max_size=8), min_size=1, max_size=4))
def test_header_blocks_decode_to_what_was_sent(blocks: list[list[tuple[str, str]]]) -> None:
    encoder, decoder = PlainEncoder(), Decoder()  # one connection: the dynamic table carries over
    for headers in blocks:
        assert decoder.decode(encoder.encode(headers)) == headers


def test_strings_go_as_plain_literals() -> None:
    path = "/3/device/" + "ab" * 32
    block = PlainEncoder().encode([(":path", path)])
    assert path.encode() in block  # no Huffman coding
    assert len(block) > len(Encoder().encode([(":path", path)]))  # the default would have coded it
