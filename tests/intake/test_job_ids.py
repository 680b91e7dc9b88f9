"""Job ids: unguessable, and ordered by time so the store's job-keyed tables grow at one end."""

import re
import time

from gateway.intake.service import _JobIds


def test_ids_are_32_hex_digits_unique_and_ordered_by_millisecond() -> None:
    ids = _JobIds()
    before = int(time.time() * 1000)
    drawn = [ids.next() for _ in range(10_000)]
    after = int(time.time() * 1000)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in drawn)
    assert len(set(drawn)) == len(drawn)
    millis = [int(i[:12], 16) for i in drawn]
    assert millis == sorted(millis)
    assert before <= millis[0] and millis[-1] <= after


def test_the_80_random_bits_differ_within_a_millisecond() -> None:
    ids = _JobIds()
    tails = {ids.next()[12:] for _ in range(5_000)}  # many share a millisecond
    assert len(tails) == 5_000
