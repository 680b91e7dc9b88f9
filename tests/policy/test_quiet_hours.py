"""Quiet hours against a brute-force oracle, minute by minute, across DST."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.quiet import Window, spread_offset
from gateway.policy.zones import next_wall_time, resolve

ZONES = [
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Tokyo",
    "UTC",
    "Europe/London",
    # Gaps that end or start at midnight: a time in them happens at the jump, on the wall's next day.
    "America/Nuuk",
    "America/Havana",
    "Asia/Beirut",
]
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
YEAR = 366 * 86400
# Edges near DST transitions are where it goes wrong, so draw them often.
edges = st.one_of(
    st.sampled_from(
        [
            time(1, 30),
            time(2, 0),
            time(2, 30),
            time(3, 0),
            time(0, 0),
            time(21, 0),
            time(8, 0),
            time(1, 0),
            time(23, 59),
        ]
    ),
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59])),
)


def oracle_quiet(window: Window, tz: ZoneInfo, instant: float) -> bool:
    local = datetime.fromtimestamp(instant, tz)  # independent of the gateway's offset cache
    return window.contains(local.hour * 60 + local.minute)


def oracle_release(window: Window, tz: ZoneInfo, instant: float) -> float | None:
    if not oracle_quiet(window, tz, instant):
        return None
    t = (int(instant) // 60 + 1) * 60
    for _ in range(3 * 1440):
        if not oracle_quiet(window, tz, t):
            return float(t)
        t += 60
    raise AssertionError("window never ends")


@settings(max_examples=400, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start=edges,
    end=edges,
    instant=st.floats(YEAR_START, YEAR_START + YEAR, allow_nan=False),
)
def test_quiet_hours_match_the_oracle(zone: str, start: time, end: time, instant: float) -> None:
    tz = ZoneInfo(zone)
    window = Window(start, end)
    assert window.quiet(tz, instant) == oracle_quiet(window, tz, instant)
    assert window.release(tz, instant) == oracle_release(window, tz, instant)


def transitions(tz: ZoneInfo) -> list[float]:
    out = []
    t = YEAR_START
    while t < YEAR_START + YEAR:
        if datetime.fromtimestamp(t, tz).utcoffset() != datetime.fromtimestamp(t + 3600, tz).utcoffset():
            lo = t
            while datetime.fromtimestamp(lo, tz).utcoffset() == datetime.fromtimestamp(t, tz).utcoffset():
                lo += 60
            out.append(lo)
        t += 3600
    return out


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from([z for z in ZONES if z not in ("Asia/Tokyo", "UTC")]), start=edges, end=edges, data=st.data()
)
def test_quiet_hours_around_each_transition(zone: str, start: time, end: time, data: st.DataObject) -> None:
    """Instants within a day of each DST change of the year, where the edges move."""
    tz = ZoneInfo(zone)
    found = transitions(tz)
    if not found:
        return
    at = data.draw(st.sampled_from(found))
    instant = at + data.draw(st.integers(-86400, 86400))
    window = Window(start, end)
    assert window.release(tz, instant) == oracle_release(window, tz, instant)


def test_spring_forward_edge_releases_at_the_jump() -> None:
    tz = ZoneInfo("Europe/Paris")  # 2026-03-29: 02:00 -> 03:00
    night = datetime(2026, 3, 28, 22, 0, tzinfo=UTC).timestamp()  # 23:00 local
    release = Window(time(21, 0), time(2, 30)).release(tz, night)
    assert release == datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()  # 03:00 local


def test_fall_back_edge_releases_at_its_first_occurrence() -> None:
    tz = ZoneInfo("America/New_York")  # 2026-11-01: 02:00 -> 01:00
    night = datetime(2026, 11, 1, 3, 0, tzinfo=UTC).timestamp()  # 23:00 EDT
    release = Window(time(22, 0), time(1, 30)).release(tz, night)
    assert release == datetime(2026, 11, 1, 5, 30, tzinfo=UTC).timestamp()  # 01:30 EDT, the first one


def test_next_wall_time_is_inclusive_when_asked() -> None:
    tz = ZoneInfo("Asia/Tokyo")
    nine = datetime(2026, 11, 28, 0, 0, tzinfo=UTC).timestamp()  # 09:00 JST
    assert next_wall_time(tz, nine, time(9, 0)) == nine
    assert next_wall_time(tz, nine, time(9, 0), inclusive=False) == nine + 86400


def test_invalid_zone_falls_back() -> None:
    fallback = ZoneInfo("UTC")
    assert resolve("Not/AZone", fallback) == (fallback, True)
    assert resolve(None, fallback) == (fallback, True)
    assert resolve("Asia/Bangkok", fallback) == (ZoneInfo("Asia/Bangkok"), False)


@given(st.text(min_size=1, max_size=20))
def test_spread_is_deterministic_and_bounded(key: str) -> None:
    assert spread_offset(key, 900) == spread_offset(key, 900)
    assert 0 <= spread_offset(key, 900) < 900
    assert spread_offset(key, 0) == 0


def test_spread_spreads() -> None:
    offsets = [spread_offset(f"user-{i}", 900) for i in range(10_000)]
    buckets = [0] * 15
    for o in offsets:
        buckets[int(o // 60)] += 1
    assert min(buckets) > 500  # roughly uniform over the 15 minutes
    assert max(offsets) - min(offsets) > 850


def test_the_policy_keeps_no_finished_job_alive() -> None:
    """Per-job rules are cached for speed; a reference to the job there once kept hundreds
    of finished jobs in memory (the 1,000,000-recipient run's RSS doubled)."""
    import sys

    from gateway.config import GatewayConfig
    from gateway.loader import channel_classes, plugin_manager
    from gateway.model.job import JOB_DECODER
    from gateway.policy.engine import defaults
    from gateway.testing.examples import example_jobs

    policy = defaults()
    job = JOB_DECODER.decode(dict(example_jobs())["job-cart-reminder.json"])
    channels = {n: cls.__new__(cls) for n, cls in channel_classes(plugin_manager(GatewayConfig())).items()}
    before = sys.getrefcount(job), sys.getrefcount(job.recipients)
    for r in job.recipients:
        for name in job.channels:
            policy.check(job, r, channels[name], name, 1_764_331_200.0)
    assert len(policy._job_rules) == 1
    assert (sys.getrefcount(job), sys.getrefcount(job.recipients)) == before


def oracle_next(tz: ZoneInfo, instant: float, at: time) -> float:
    """The first minute boundary at or after `instant` where the wall clock reads `at`, or
    jumps over it (a time in a spring-forward gap happens at the jump), found by walking
    minute by minute with datetime alone."""
    u = math.ceil(instant / 60) * 60
    for _ in range(4 * 1440):
        now = datetime.fromtimestamp(u, tz).replace(tzinfo=None)
        expected = datetime.fromtimestamp(u - 60, tz).replace(tzinfo=None) + timedelta(minutes=1)
        if now.time() == at:
            return float(u)
        if now > expected:  # the clock jumped forward over [expected, now)
            days = {expected.date(), now.date()}
            if any(expected <= datetime.combine(day, at) < now for day in days):
                return float(u)
        u += 60
    raise AssertionError("no occurrence in four days")


def near_the_jump(tz: ZoneInfo, jump: float) -> list[time]:
    """Wall times inside the gap or overlap at `jump`, and a minute either side of it."""
    before = datetime.fromtimestamp(jump - 60, tz).replace(tzinfo=None) + timedelta(minutes=1)
    after = datetime.fromtimestamp(jump, tz).replace(tzinfo=None)
    lo, hi = min(before, after) - timedelta(minutes=1), max(before, after) + timedelta(minutes=1)
    return [(lo + timedelta(minutes=m)).time() for m in range(int((hi - lo).total_seconds() // 60) + 1)]


@settings(max_examples=400, deadline=None)
@given(zone=st.sampled_from([z for z in ZONES if z not in ("Asia/Tokyo", "UTC")]), data=st.data())
def test_next_wall_time_matches_the_oracle_around_each_transition(zone: str, data: st.DataObject) -> None:
    tz = ZoneInfo(zone)
    found = transitions(tz)
    if not found:
        return
    jump = data.draw(st.sampled_from(found))
    at = data.draw(st.sampled_from(near_the_jump(tz, jump)) | edges)
    instant = jump + data.draw(st.sampled_from([0, 60, -60, -3600]) | st.integers(-2 * 86400, 2 * 86400))
    assert next_wall_time(tz, instant, at) == oracle_next(tz, instant, at)


def test_a_gap_ending_at_midnight_happens_at_the_jump() -> None:
    """America/Nuuk, 2026-03-29: 22:59:59 is followed by 00:00. At that instant a 23:00
    target has just happened (it was deferred 23 hours)."""
    tz = ZoneInfo("America/Nuuk")
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC).timestamp()
    assert next_wall_time(tz, jump, time(23, 0)) == jump
    assert next_wall_time(tz, jump - 3600, time(23, 0)) == jump
