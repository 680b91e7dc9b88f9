"""The embedded store's log of providers' answers: appended to a file beside the database
as they arrive, read back at start-up.

An answer must be on disk before the process can die with it, or a restart sends that
delivery again; it need not survive a power cut (that costs a few more copies, never a
loss). So each write is one `os.write` of length-prefixed msgpack frames from the event
loop: in the OS's hands at once, with no fsync and no wait behind the database's group
commit (whose fsync can take milliseconds, while answers keep arriving).

The live answers (of jobs not finished, from their cursor on) are kept in memory; when
the file has grown past `COMPACT_BYTES`, it is rewritten with only those. A frame torn by
a crash in mid-write ends the log: what follows it is dropped at start-up.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import msgspec

from gateway.model.delivery import Result

log = logging.getLogger(__name__)
COMPACT_BYTES = 8 * 1024 * 1024
_LENGTH = struct.Struct(">I")
Entries = list[tuple[int, str, Result]]  # (recipient, delivery id, answer)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, Entries]).decode


class AckFile:
    def __init__(self, path: str | None):
        self.path = Path(path) if path is not None else None  # None: in memory only
        self.live: dict[str, dict[int, dict[str, Result]]] = {}  # job -> recipient -> id -> answer
        self.size = 0
        self._fd: int | None = None
        # Jobs finished lately: a late write of theirs is dropped. An OrderedDict: a dict whose
        # first entries are deleted one by one takes ever longer to find its first entry.
        self._done: OrderedDict[str, None] = OrderedDict()

    def open(self) -> None:
        if self.path is None:
            return
        if self.path.exists():
            self._read()
        self._rewrite()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, job_id: str, entries: Sequence[tuple[int, str, Result]]) -> None:
        if job_id in self._done:
            return
        answers = self.live.setdefault(job_id, {})
        for recipient, delivery_id, result in entries:
            answers.setdefault(recipient, {})[delivery_id] = result
        if self._fd is not None:
            frame = _encode((job_id, list(entries)))
            self.size += os.write(self._fd, _LENGTH.pack(len(frame)) + frame)

    def answers(self, job_id: str) -> dict[int, dict[str, Result]]:
        return {recipient: dict(ids) for recipient, ids in self.live.get(job_id, {}).items()}

    def passed(self, job_id: str, cursor: int) -> None:
        """Recipients before `cursor` have their decisions stored: their answers go."""
        answers = self.live.get(job_id)
        if answers:
            for recipient in [r for r in answers if r < cursor]:
                del answers[recipient]
        self._compact_if_large()

    def finished(self, job_id: str) -> None:
        self.live.pop(job_id, None)
        self._done[job_id] = None
        if len(self._done) > 10_000:
            self._done.popitem(last=False)
        self._compact_if_large()

    # -- the file -------------------------------------------------------------------------
    def _read(self) -> None:
        assert self.path is not None
        self.live = read(self.path)

    def _compact_if_large(self) -> None:
        if self.size > COMPACT_BYTES:
            self._rewrite()

    def _rewrite(self) -> None:
        """The live answers alone, in a new file renamed over the old one."""
        assert self.path is not None or self._fd is None
        if self.path is None:
            return
        self.live = {job: answers for job, answers in self.live.items() if answers}
        fresh = self.path.with_name(self.path.name + ".new")
        frames = []
        for job_id, answers in self.live.items():
            entries = [(r, delivery_id, result) for r, ids in answers.items() for delivery_id, result in ids.items()]
            frame = _encode((job_id, entries))
            frames.append(_LENGTH.pack(len(frame)) + frame)
        blob = b"".join(frames)
        fresh.write_bytes(blob)
        os.replace(fresh, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = len(blob)


def read(path: Path) -> dict[str, dict[int, dict[str, Result]]]:
    """The answers in a log file, by job, recipient and delivery id (read only: tools and
    tests may look while a gateway appends)."""
    data = path.read_bytes()
    live: dict[str, dict[int, dict[str, Result]]] = {}
    offset = 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + _LENGTH.size + length
        if end > len(data):
            break
        try:
            job_id, entries = _decode(data[offset + _LENGTH.size : end])
        except msgspec.DecodeError:
            break
        answers = live.setdefault(job_id, {})
        for recipient, delivery_id, result in entries:
            answers.setdefault(recipient, {})[delivery_id] = result
        offset = end
    if offset < len(data):
        log.warning("%s: %d bytes after the last whole frame dropped (a write cut short)", path, len(data) - offset)
    return live
