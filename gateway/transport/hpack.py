"""HPACK (RFC 7541), both directions of one HTTP/2 connection, for `gateway.transport.http2`.

The encoder never Huffman-codes (the sender may choose, RFC 7541 5.2, and coding in Python
costs more than the bytes it saves on a loopback or a LAN) and keeps headers that differ on
every request out of the dynamic table. The decoder takes any encoder's blocks, Huffman
coded or not, through hpack's decoding table: `hpack.Decoder` itself costs ~5 us per
header, this one ~1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

TABLE_SIZE = 4096  # our HPACK tables, both ways (the protocol's default)
MAX_HEADER_LIST = 64 * 1024


class CompressionError(ValueError):
    """A header block this decoder cannot read: a connection error (COMPRESSION_ERROR)."""


STATIC = HeaderTable.STATIC_TABLE  # 61 (name, value) pairs, 1-based on the wire
_STATIC_PAIR = {pair: i + 1 for i, pair in reversed(list(enumerate(STATIC)))}
_STATIC_NAME = {name: i + 1 for i, (name, _) in reversed(list(enumerate(STATIC)))}
_STATIC_CODES = {pair: bytes((0x80 | index,)) for pair, index in _STATIC_PAIR.items()}


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """A string literal, never Huffman coded: the sender may choose (RFC 7541 5.2), and
    coding it in Python costs more than the bytes it saves on a loopback or a LAN."""
    size = len(data)
    return (bytes((size,)) if size < 127 else hpack_int(size, 7)) + data


class HeaderEncoder:
    """Our side of one connection's HPACK state. Headers named in `volatile` (values that
    differ on every request) go as never-indexed literals: indexing them would only evict
    the ones that repeat (method, authority, topic, the provider token), which after their
    first request go as one byte each."""

    def __init__(self, volatile: Iterable[bytes] = ()):
        self.volatile = frozenset(volatile)
        self.entries: dict[tuple[bytes, bytes], int] = {}  # pair -> its insertion number
        self.order: deque[tuple[tuple[bytes, bytes], int]] = deque()  # oldest first, with sizes
        self.inserted = 0
        self.size = 0
        self.max_size = TABLE_SIZE
        self.resized: list[int] = []  # size updates to signal at the next block
        self._literal_names: dict[bytes, bytes] = {}
        self.known: dict[tuple[bytes, bytes], bytes] = dict(_STATIC_CODES)  # pair -> its index, encoded

    def set_max_size(self, limit: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: our table never exceeds it (nor 4096)."""
        size = min(limit, TABLE_SIZE)
        if size != self.max_size:
            self.max_size = size
            self.resized = [min([*self.resized, size]), size] if self.resized else [size]
            self._evict()

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        parts = []
        if self.resized:
            parts = [hpack_int(size, 5, 0x20) for size in dict.fromkeys(self.resized)]
            self.resized = []
        known = self.known
        for pair in headers:
            code = known.get(pair)
            if code is not None:  # static, or in the table as it is now
                parts.append(code)
                continue
            name, value = pair
            if name in self.volatile:
                prefix = self._literal_names.get(name)
                if prefix is None:
                    index = _STATIC_NAME.get(name)
                    prefix = self._literal_names[name] = hpack_int(index, 4, 0x10) if index else b"\x10" + _string(name)
                parts.append(prefix + _string(value))
                continue
            number = self.entries.get(pair)
            if number is not None:
                parts.append(known.setdefault(pair, hpack_int(62 + self.inserted - 1 - number, 7, 0x80)))
                continue
            index = _STATIC_NAME.get(name)
            parts.append((hpack_int(index, 6, 0x40) if index else b"\x40" + _string(name)) + _string(value))
            self._insert(pair, 32 + len(name) + len(value))
            known = self.known
        return b"".join(parts)

    def _insert(self, pair: tuple[bytes, bytes], size: int) -> None:
        if size > self.max_size:  # too large for any table: it empties the table (RFC 7541 4.4)
            self.entries.clear()
            self.order.clear()
            self.size = 0
            self.known = dict(_STATIC_CODES)
            return
        self.entries[pair] = self.inserted
        self.inserted += 1
        self.known = dict(_STATIC_CODES)  # every dynamic index moved by one
        self.order.append((pair, size))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            pair, size = self.order.popleft()
            self.size -= size
            del self.entries[pair]
            self.known.pop(pair, None)


class HeaderDecoder:
    """The peer's side of one connection's HPACK state: every header block of the
    connection goes through it, in order. `hpack.Decoder` takes ~5 us per header, this
    ~1 us; Huffman-coded strings use hpack's table."""

    def __init__(self) -> None:
        self.table: list[tuple[bytes, bytes]] = []  # newest last
        self.sizes: list[int] = []
        self.size = 0
        self.max_size = TABLE_SIZE

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers = []
        pos, end = 0, len(block)
        total = 0
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:  # indexed
                    if byte != 0xFF:
                        index = byte & 0x7F
                        pos += 1
                    else:
                        index, pos = self._int(block, pos, 7)
                    header = STATIC[index - 1] if 0 < index <= 61 else self._dynamic(index)
                elif byte & 0xE0 == 0x20:  # dynamic table size update
                    size, pos = self._int(block, pos, 5)
                    if size > TABLE_SIZE:
                        raise CompressionError("table size update above our limit")
                    self.max_size = size
                    self._evict()
                    continue
                else:  # a literal: with incremental indexing (01), without (0000) or never indexed (0001)
                    indexing = byte & 0xC0 == 0x40
                    limit = 0x3F if indexing else 0x0F
                    index = byte & limit
                    if index == limit:
                        index, pos = self._int(block, pos, 6 if indexing else 4)
                    else:
                        pos += 1
                    if not index:
                        name, pos = self._str(block, pos)
                    else:
                        name = STATIC[index - 1][0] if index <= 61 else self._dynamic(index)[0]
                    size = block[pos]
                    if size < 0x7F:  # short and not Huffman coded: the common case, inline
                        pos += 1 + size
                        if pos > end:
                            raise IndexError
                        header = (name, block[pos - size : pos])
                    else:
                        value, pos = self._str(block, pos)
                        header = (name, value)
                    if indexing:
                        self._insert(*header)
                headers.append(header)
                total += 32 + len(header[0]) + len(header[1])
                if total > MAX_HEADER_LIST:
                    raise CompressionError("header list too large")
        except IndexError:
            raise CompressionError("truncated header block") from None
        return headers

    @staticmethod
    def _int(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
        limit = (1 << prefix) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
            if shift > 28:
                raise CompressionError("HPACK integer too large")

    def _str(self, block: bytes, pos: int) -> tuple[bytes, int]:
        huffman = block[pos] & 0x80
        size, pos = self._int(block, pos, 7)
        if pos + size > len(block):
            raise IndexError
        data = block[pos : pos + size]
        if huffman:
            try:
                data = decode_huffman(data)
            except Exception:
                raise CompressionError("bad Huffman coding") from None
        return data, pos + size

    def _dynamic(self, index: int) -> tuple[bytes, bytes]:
        dynamic = index - 61
        if index <= 0 or dynamic > len(self.table):
            raise CompressionError(f"HPACK index {index} out of range")
        return self.table[-dynamic]

    def _insert(self, name: bytes, value: bytes) -> None:
        size = 32 + len(name) + len(value)
        self.table.append((name, value))
        self.sizes.append(size)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            self.table.pop(0)
            self.size -= self.sizes.pop(0)
