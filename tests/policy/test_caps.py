"""Cap rules and the ledger: exact limits, refunds, free times, calendar windows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, GatewayConfig
from gateway.model.caps import CapRequest, Check, Denied, Granted
from gateway.model.job import Job
from gateway.policy.caps import Cap, CapRule
from gateway.policy.engine import load_policy
from gateway.store.caps import CapLedger


def job(**fields: object) -> Job:
    base = {
        "campaign": "spring",
        "channels": ["apns"],
        "variants": [{"name": "d", "content": {}}],
        "recipients": [{"user_id": "u"}],
    }
    return msgspec.json.decode(json.dumps({**base, **fields}).encode(), type=Job)


def rolling(rule: str, limit: int, period: float, now: float, action: str = "drop") -> Check:
    return Check(rule, now - period, limit, period, None, action)


@pytest.mark.parametrize(
    ("rule", "job_fields", "channel", "applies"),
    [
        ({"channels": ["push"]}, {}, "apns", True),
        ({"channels": ["push"]}, {}, "email", False),
        ({"channels": ["any"]}, {}, "email", True),
        ({"channels": ["email", "speaker"]}, {}, "speaker", True),
        ({"tags": ["promo"]}, {"tags": ["cart", "promo"]}, "apns", True),
        ({"tags": ["promo"]}, {"tags": ["cart"]}, "apns", False),
        ({"campaigns": ["spring"]}, {}, "apns", True),
        ({"campaigns": ["autumn"]}, {}, "apns", False),
        ({}, {"category": "transactional"}, "apns", False),
        ({"include_transactional": True}, {"category": "transactional"}, "apns", True),
        ({"channels": ["push"], "tags": ["promo"]}, {"tags": ["promo"]}, "email", False),  # all criteria must hold
    ],
)
def test_rule_targets(rule: dict[str, object], job_fields: dict[str, object], channel: str, applies: bool) -> None:
    cap = Cap.from_rule(msgspec.convert({"name": "r", "limit": 1, "window": "1h", **rule}, CapRule))
    assert cap.applies(job(**job_fields), channel) is applies


def test_rolling_window_and_free_time() -> None:
    ledger = CapLedger()
    outcomes = []
    for t in (0, 10, 20):
        out, _ = ledger.reserve([CapRequest("u", [rolling("r", 2, 3600, t)])], t)
        outcomes += out
    assert isinstance(outcomes[0], Granted) and isinstance(outcomes[1], Granted)
    assert outcomes[2] == Denied("r", "drop", 3600.0)  # the first send leaves the window
    out, _ = ledger.reserve([CapRequest("u", [rolling("r", 2, 3600, 3600)])], 3600)
    assert isinstance(out[0], Granted)


def test_all_rules_or_none_and_the_strictest_decides() -> None:
    ledger = CapLedger()
    ledger.reserve([CapRequest("u", [rolling("hourly", 1, 3600, 0)])], 0)
    checks = [rolling("daily", 5, 86400, 100), rolling("hourly", 1, 3600, 100, "defer")]
    (outcome,), added = ledger.reserve([CapRequest("u", checks)], 100)
    assert outcome == Denied("hourly", "defer", 3600.0)
    assert added == [] and ledger.count("daily", "u", 0) == 0  # nothing taken from "daily"
    drop_and_defer = [rolling("hourly", 1, 3600, 100, "defer"), rolling("zero", 0, 60, 100, "drop")]
    (outcome,), _ = ledger.reserve([CapRequest("u", drop_and_defer)], 100)
    assert isinstance(outcome, Denied) and outcome.rule == "zero"  # drop beats defer


def test_calendar_day_resets_at_local_midnight() -> None:
    cap = Cap.from_rule(CapRule(name="day", limit=1, calendar="day"))
    tz = ZoneInfo("America/Chicago")
    now = datetime(2026, 11, 28, 23, 0, tzinfo=UTC).timestamp()  # 17:00 in Chicago
    since, reset = cap.bounds(now, tz)
    assert since == datetime(2026, 11, 28, 6, 0, tzinfo=UTC).timestamp()  # 00:00 CST
    assert reset == datetime(2026, 11, 29, 6, 0, tzinfo=UTC).timestamp()
    week = Cap.from_rule(CapRule(name="week", limit=1, calendar="week"))
    since, reset = week.bounds(now, tz)
    assert datetime.fromtimestamp(since, tz).strftime("%a %H:%M") == "Mon 00:00"
    assert reset - since == 7 * 86400


def test_calendar_day_is_right_across_dst() -> None:
    cap = Cap.from_rule(CapRule(name="day", limit=1, calendar="day"))
    tz = ZoneInfo("America/New_York")
    now = datetime(2026, 11, 1, 15, 0, tzinfo=UTC).timestamp()  # fall-back day: 25 hours long
    since, reset = cap.bounds(now, tz)
    assert reset - since == 25 * 3600


def test_refund_restores_exactly() -> None:
    ledger = CapLedger()
    (a,), _ = ledger.reserve([CapRequest("u", [rolling("r", 2, 3600, 0), rolling("s", 9, 60, 0)])], 0)
    (b,), _ = ledger.reserve([CapRequest("u", [rolling("r", 2, 3600, 1)])], 1)
    assert isinstance(a, Granted) and isinstance(b, Granted)
    ledger.refund([a.reservation])  # type: ignore[list-item]
    assert ledger.count("r", "u", -1) == 1 and ledger.count("s", "u", -1) == 0
    (c,), _ = ledger.reserve([CapRequest("u", [rolling("r", 2, 3600, 2)])], 2)
    assert isinstance(c, Granted)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(["ana", "ben"]), st.integers(0, 50)),
        st.tuples(st.just("refund"), st.integers(0, 100), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=operations,
    limits=st.tuples(st.integers(0, 4), st.integers(1, 6)),
    periods=st.tuples(st.integers(1, 40), st.integers(1, 200)),
)
def test_no_interleaving_exceeds_a_cap_and_refunds_restore(
    ops: list[tuple[str, object, int]], limits: tuple[int, int], periods: tuple[int, int]
) -> None:
    ledger = CapLedger()
    now = 0.0
    granted: list[tuple[str, str, float]] = []  # (reservation, user, at) still counted
    for kind, arg, step in ops:
        now += step
        if kind == "send":
            user = str(arg)
            checks = [rolling("a", limits[0], periods[0], now), rolling("b", limits[1], periods[1], now)]
            (outcome,), _ = ledger.reserve([CapRequest(user, checks)], now)
            if isinstance(outcome, Granted):
                assert outcome.reservation is not None
                granted.append((outcome.reservation, user, now))
        elif granted:
            reservation, _, _ = granted.pop(int(arg) % len(granted))
            ledger.refund([reservation])
        for user in ("ana", "ben"):
            for rule, limit, period in (("a", limits[0], periods[0]), ("b", limits[1], periods[1])):
                in_window = [g for g in granted if g[1] == user and g[2] > now - period]
                assert len(in_window) <= limit  # never over the cap
                assert ledger.count(rule, user, now - period) == len(in_window)  # refunds restore exactly


def test_config_errors_name_the_rule() -> None:
    config = GatewayConfig(
        caps=[
            {"name": "a", "limit": 1},
            {"name": "a", "limit": 1, "window": "1h"},
            {"name": "b", "limit": -1, "window": "soon"},
        ]
    )
    with pytest.raises(ConfigError) as err:
        load_policy(config)
    assert "caps[2].limit: expected an integer >= 0, got -1" in err.value.problems
    assert "caps[2].window: expected a duration such as 500ms, 30s, 15m, 24h or 7d, got 'soon'" in err.value.problems
    assert "caps[0]: give exactly one of `window` or `calendar`" in err.value.problems
    assert "caps[1].name: duplicate rule name 'a'" in err.value.problems
