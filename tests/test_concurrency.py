from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.channel import map_bounded, parse_retry_after
from gateway.runner import Admission

REPO = Path(__file__).resolve().parent.parent


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(), max_size=60), st.integers(min_value=1, max_value=16))
def test_map_bounded_keeps_order_and_bound(items: list[int], limit: int) -> None:
    inflight = peak = 0

    async def fn(x: int) -> int:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0)
        inflight -= 1
        return x * 2

    async def run() -> list[int]:
        before = len(asyncio.all_tasks())
        result = await map_bounded(items, fn, limit)
        assert len(asyncio.all_tasks()) == before
        return result

    assert asyncio.run(run()) == [x * 2 for x in items]
    assert peak <= limit


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=40), st.integers(min_value=1, max_value=100))
def test_admission_never_passes_its_bound_except_for_one_oversize_job(sizes: list[int], limit: int) -> None:
    admission = Admission(limit)
    held: list[int] = []
    for i, size in enumerate(sizes):
        if i % 3 == 2 and held:
            admission.release(held.pop(0))
        if admission.try_acquire(size):
            held.append(size)
        assert admission.inflight <= limit or len(held) == 1  # one job larger than the bound runs alone
        assert admission.inflight == sum(held)


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == 10
    assert parse_retry_after("soon", 0) is None


def test_demo_runs_end_to_end(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--recipients", "300"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: OK" in proc.stdout
    for provider in (
        "APNs (HTTP/2, TLS) got",
        "FCM got",
        "Web push service got",
        "SMTP server got",
        "all signatures verified",
    ):
        assert provider in proc.stdout
    assert "recipients/s end to end" in proc.stdout
