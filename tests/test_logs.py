"""Logs worth reading: one line per job, provider trouble summarised per provider, JSON for
machines, no line twice, no secret ever."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.dispatch.trouble import Trouble
from gateway.logs import TEXT_FORMAT, TextFormatter, Throttled, TurnHandler
from gateway.model.delivery import InvalidToken, PermanentFailure, TransientFailure
from gateway.testing import Fault, WebhookReceiver, new_secret
from tests.conftest import API_KEY, make_config, speaker_job
from tests.test_crash import post, wait_completed, write_config


async def _serve_json(config: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "gateway exited before listening"
            lines.append(line)
            entry = json.loads(line)
            if entry.get("event") == "listening":
                return proc, entry["url"], lines


@pytest.mark.timeout(60)
async def test_a_json_log_of_a_run_has_job_lines_no_duplicates_and_no_secrets(tmp_path: Path) -> None:
    secret = new_secret()
    async with WebhookReceiver(secret, fault=lambda payload, attempt: Fault(503) if attempt == 1 else None) as rx:
        config = write_config(tmp_path, rx.url, extra='[logging]\nformat = "json"\nprovider_summary = "1h"\n')
        env = dict(os.environ, GATEWAY_TEST_API_KEYS=API_KEY, GATEWAY_TEST_SPEAKER_SECRET=secret)
        proc, url, lines = await _serve_json(config, env)
        job_id = await post(url, speaker_job(3, campaign="logged"))
        await wait_completed(url, job_id)
        proc.send_signal(signal.SIGTERM)
        out, err = await proc.communicate()
    lines += err.decode().splitlines(keepends=True)
    assert out == b"", "with JSON logs nothing else goes to stdout"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    events = Counter(e.get("event") for e in entries)
    assert events["listening"] == 1 and events["started"] == 1 and events["stopped"] == 1
    accepted = next(e for e in entries if e.get("event") == "job.accepted")
    assert accepted["job_id"] == job_id and accepted["campaign"] == "logged" and accepted["recipients"] == 3
    done = next(e for e in entries if e.get("event") == "job.completed")
    assert done["job_id"] == job_id and done["counts"] == {"sent": 3} and done["duration_s"] > 0
    # The first attempts failed (503, retried): one summary line at shutdown, not three.
    trouble = [e for e in entries if e.get("event") == "provider.trouble"]
    assert len(trouble) == 1 and trouble[0]["by_reason"] == {"transient:http_503": 3}, trouble
    text = "".join(lines)
    assert len(set(lines)) == len(lines), "a line was logged twice"
    for value in (API_KEY, secret, secret.removeprefix("whsec_")):
        assert value not in text


def test_provider_trouble_is_one_line_per_provider_and_interval(caplog) -> None:
    trouble = Trouble()
    for i in range(1000):
        trouble.failure("apns:shop", TransientFailure("timeout") if i % 10 else TransientFailure("http_503"))
    trouble.failure("apns:shop", InvalidToken("BadDeviceToken"))
    trouble.failure("fcm", PermanentFailure("INVALID_ARGUMENT"))
    with caplog.at_level(logging.INFO, "gateway.providers"):
        assert trouble.flush(60) == 2
        assert trouble.flush(60) == 0  # nothing new: nothing said
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "provider apns:shop, last 60s: 1000 transient (timeout 900, http_503 100); 1 invalid_token (BadDeviceToken 1)",
        "provider fcm, last 60s: 1 permanent (INVALID_ARGUMENT 1)",
    ]


def test_no_secret_of_any_channel_reaches_the_log_of_a_full_demo_run(tmp_path: Path) -> None:
    """Every channel of the demo (webhook, email, FCM, APNs, web push) runs its jobs with
    debug logging; neither the configured secrets nor any private key appears."""
    known = {
        "GATEWAY_DEMO_SPEAKER_SECRET": new_secret(),
        "GATEWAY_DEMO_UNSUBSCRIBE_SECRET": "unsubscribe-secret-4f1c2b",
        "GATEWAY_DEMO_API_KEY": "api-key-9d8e7f",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "-v", "demo", "--recipients", "0"],
        capture_output=True, text=True, env=dict(os.environ, **known), cwd=Path(__file__).parent.parent, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert " accepted: campaign " in log and " completed in " in log
    for value in [*known.values(), known["GATEWAY_DEMO_SPEAKER_SECRET"].removeprefix("whsec_")]:
        assert value not in log
    assert "PRIVATE KEY" not in log and "private_key" not in log


async def test_a_busy_port_is_one_line(tmp_path: Path, receiver) -> None:
    config = write_config(tmp_path, receiver.url)
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, GATEWAY_TEST_API_KEYS=API_KEY),
        )  # fmt: skip
        _, err = await proc.communicate()
    finally:
        blocker.close()
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last == f"gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in err.decode()


def test_a_closed_pipe_and_a_missing_file_are_one_line(tmp_path: Path) -> None:
    job = speaker_job(3000)  # a table well past a pipe's buffer: the writer meets the closed pipe
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    shell = f"{sys.executable} -m gateway preview {path} | head -1; echo rc=${{PIPESTATUS[0]}} >&2"
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.startswith("campaign ") and "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert proc.stderr.strip() == "rc=141"  # as a command killed by SIGPIPE says
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "preview", str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr == f"{tmp_path / 'nope.json'}: No such file or directory\n"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(tmp_path / "nope.toml"), "serve"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    missing = tmp_path / "nope.toml"
    assert proc.stderr.splitlines() == [f"{missing}: 1 problem(s)", "  cannot read: No such file or directory"]


def test_the_receiver_runs_as_a_module_without_warnings_and_prints_what_it_gets() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "gateway.testing.receive", "--unsigned"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        import urllib.request

        headers = {"webhook-id": "msg_1", "content-type": "application/json"}
        request = urllib.request.Request(f"{url}/hooks/x", data=b'{"speech": "hi"}', headers=headers)
        assert urllib.request.urlopen(request, timeout=5).status == 200
        assert proc.stdout.readline() == 'msg_1 /hooks/x {"speech": "hi"}\n'
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert "Warning" not in err


del make_config


class _Writes(io.StringIO):
    """A stream that remembers each write (a system call each on a real stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def test_lines_of_one_loop_turn_are_written_together_and_warnings_at_once() -> None:
    stream = _Writes()
    handler = TurnHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("tests.turns")
    log.addHandler(handler)
    log.propagate, log.level = False, logging.INFO
    try:
        log.info("one")
        log.info("two")
        assert stream.writes == []  # not yet: at the end of this turn
        await asyncio.sleep(0)
        assert len(stream.writes) == 1 and stream.writes[0].count("\n") == 2
        log.info("three")
        log.warning("trouble")  # at once, with the line before it, in order
        assert [w.split(": ", 1)[1] for w in stream.writes[1].splitlines()] == ["three", "trouble"]
        await asyncio.to_thread(log.info, "from a thread")  # no loop there: at once
        assert stream.writes[-1].endswith("from a thread\n")
        log.info("last")
        logging.shutdown([lambda: handler])  # at exit: nothing waiting is lost
        assert stream.getvalue().endswith("last\n")
        assert all(line[:4].isdigit() and line[19] == "," for line in stream.getvalue().splitlines())
    finally:
        log.removeHandler(handler)


def test_the_time_formatted_once_a_second_matches_the_standard_format() -> None:
    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.5, 1_799_999_999.25):
        record = logging.makeLogRecord({"msg": "m", "created": created, "msecs": (created % 1) * 1000})
        assert ours.format(record) == standard.format(record)


def test_throttled_advice_is_said_once_an_interval_with_what_it_held_back(caplog) -> None:
    clock = FakeClock(0)
    advice = Throttled(logging.getLogger("plugins.x"), interval=60, clock=clock.monotonic)
    with caplog.at_level(logging.WARNING, "plugins.x"):
        for i in range(1000):
            advice.error("x: HTTP %d: check the key", 403)
            advice.warning("x: slow %s", i)
        clock.advance(60)
        advice.error("x: HTTP %d: check the key", 401)
    assert [r.getMessage() for r in caplog.records] == [
        "x: HTTP 403: check the key",
        "x: slow 0",
        "x: HTTP 401: check the key (999 more like this since the last such line)",
    ]
