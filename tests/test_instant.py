"""Our RFC 3339 formatter against datetime's, which it re-implements for speed."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model.instant import rfc3339


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=4e9), st.integers(0, 4_000_000_000).map(float)))
def test_rfc3339_is_what_datetime_says(instant: float) -> None:
    assert rfc3339(instant) == datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")
