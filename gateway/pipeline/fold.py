"""Folding the results of one recipient's devices on one channel into one decision."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.dispatch.retry import Postponed
from gateway.model import decision as d
from gateway.model.delivery import Delivery, InvalidToken, PermanentFailure, Result, Sent
from gateway.model.job import Device
from gateway.pipeline.plan import Ready
from gateway.policy.engine import Verdict

Answer = Result | Postponed


def fold_devices(channel: str, step: Ready, pairs: Sequence[tuple[Delivery, Answer]]) -> Verdict:
    """Sent if any device got it; deferred if the circuit held every device back;
    invalid_token if every device is dead; else failed with the first permanent reason."""
    ok = sum(isinstance(r, Sent) for _, r in pairs)
    if ok:
        notes = [step.note, None if ok == len(pairs) else f"{ok} of {len(pairs)} devices"]
        return Verdict("sent", "", "; ".join(n for n in notes if n) or None, flags=step.flags)
    if all(isinstance(r, Postponed) for _, r in pairs):
        until = max(r.until for _, r in pairs if isinstance(r, Postponed))
        return Verdict("deferred", d.PROVIDER_UNAVAILABLE, f"{channel} is failing: circuit open", until, step.flags)
    dead = [r for _, r in pairs if isinstance(r, InvalidToken)]
    if len(dead) == len(pairs):
        return Verdict("invalid_token", dead[0].reason, flags=step.flags)
    failure = next((r for _, r in pairs if isinstance(r, PermanentFailure)), None)
    if failure is None:  # some devices dead, the others postponed
        failure = PermanentFailure(d.PROVIDER_UNAVAILABLE, "circuit opened during retries")
    return Verdict("failed", failure.reason, failure.detail, flags=step.flags)


def token_of(to: Device | str) -> str:
    """What upstream knows a device by: its token, endpoint, or target/device id."""
    if isinstance(to, str):
        return to
    if to.token is not None:
        return to.token
    if to.subscription is not None:
        return to.subscription.endpoint
    return f"{to.target}/{to.device_id}"
