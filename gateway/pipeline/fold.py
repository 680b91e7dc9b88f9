"""Folding the answers of one recipient's devices on one channel into one decision."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.dispatch.retry import Postponed
from gateway.model import decision as d
from gateway.model.delivery import Delivery, InvalidToken, PermanentFailure, Result, Sent
from gateway.model.job import Device
from gateway.pipeline.plan import Ready
from gateway.policy.engine import Verdict
from gateway.store.base import DeferredState

Answer = Result | Postponed


def fold_devices(channel: str, step: Ready, pairs: Sequence[tuple[Delivery, Answer]], expires: float | None) -> Verdict:
    """Sent if any device got it; deferred while any device waits for another attempt
    (unless none can come before the job expires); invalid_token if every device is dead;
    else failed with the first permanent reason."""
    ok = sum(isinstance(r, Sent) for _, r in pairs)
    if ok:
        notes = [step.note, None if ok == len(pairs) else f"{ok} of {len(pairs)} devices"]
        return Verdict("sent", "", "; ".join(n for n in notes if n) or None, flags=step.flags)
    waiting = [r for _, r in pairs if isinstance(r, Postponed)]
    if waiting:
        last = max(waiting, key=lambda r: r.until)
        if expires is not None and last.until >= expires:
            return Verdict(
                "suppressed", d.EXPIRED, f"{_why(channel, last)}; no attempt before expires_at", None, step.flags
            )
        return Verdict("deferred", last.reason, _why(channel, last), last.until, step.flags)
    dead = [r for _, r in pairs if isinstance(r, InvalidToken)]
    if len(dead) == len(pairs):
        return Verdict("invalid_token", dead[0].reason, flags=step.flags)
    failure = next(r for _, r in pairs if isinstance(r, PermanentFailure))
    return Verdict("failed", failure.reason, failure.detail, flags=step.flags)


def _why(channel: str, postponed: Postponed) -> str:
    if postponed.reason == d.RETRYING:
        return f"attempt {postponed.attempts} failed ({postponed.last_error}); next attempt when due"
    if postponed.reason == d.PROVIDER_BUSY:
        return f"{channel} is busy: its deliveries in flight are at their limit"
    return f"{channel}'s provider is failing: circuit open"


def retry_state(pairs: Sequence[tuple[Delivery, Answer]]) -> DeferredState:
    """What a deferred recipient's release goes on from: the devices still waiting, the
    others' answers, and the attempts so far."""
    waiting = [(k, r) for k, (_, r) in enumerate(pairs) if isinstance(r, Postponed)]
    firsts = [r.first_attempt for _, r in waiting if r.first_attempt is not None]
    answers = {k: r for k, (_, r) in enumerate(pairs) if not isinstance(r, Postponed)}
    return DeferredState(
        attempts=max(r.attempts for _, r in waiting),
        first_attempt=min(firsts) if firsts else None,
        last_error=next((r.last_error for _, r in waiting if r.last_error), None),
        devices=None if len(waiting) == len(pairs) else [k for k, _ in waiting],
        answers=answers or None,
    )


def token_of(to: Device | str) -> str:
    """What upstream knows a device by: its token, endpoint, or target/device id."""
    if isinstance(to, str):
        return to
    if to.token is not None:
        return to.token
    if to.subscription is not None:
        return to.subscription.endpoint
    return f"{to.target}/{to.device_id}"
