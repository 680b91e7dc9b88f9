"""The circuit breaker: only distinct deliveries' provider faults open it."""

from __future__ import annotations

from gateway.dispatch.breaker import Breaker
from gateway.model.delivery import InvalidToken, PermanentFailure, Sent, TransientFailure

FAULT = TransientFailure("http_503")


def test_one_message_retried_again_and_again_cannot_open_it() -> None:
    breaker = Breaker("p", threshold=3, cooldown=30)
    for now in range(100):
        breaker.record("the-same-delivery", FAULT, float(now))
    assert breaker.allows(100.0) and not breaker.is_open


def test_distinct_deliveries_failing_in_a_row_open_it_and_a_success_closes_it() -> None:
    breaker = Breaker("p", threshold=3, cooldown=30)
    for n in range(3):
        breaker.record(f"d{n}", FAULT, 0.0)
    assert not breaker.allows(10.0) and breaker.retry_at() == 30.0
    assert breaker.allows(30.0)  # the probe
    breaker.record("probe", FAULT, 30.0)  # fails: open again, for twice as long
    assert not breaker.allows(31.0) and breaker.retry_at() == 90.0
    breaker.record("probe-2", Sent(), 90.0)
    assert breaker.allows(90.0) and not breaker.is_open


def test_what_is_not_the_providers_fault_does_not_count() -> None:
    breaker = Breaker("p", threshold=2, cooldown=30)
    for n in range(10):
        breaker.record(f"p{n}", PermanentFailure("invalid_request"), 0.0)
        breaker.record(f"t{n}", InvalidToken("unregistered"), 0.0)
    assert not breaker.is_open
    breaker.record("a", FAULT, 0.0)
    breaker.record("b", Sent(), 0.0)  # a success in between: the count starts again
    breaker.record("c", FAULT, 0.0)
    assert not breaker.is_open
