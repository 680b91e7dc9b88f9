"""Render limits, in both renderers; the event loop stays free while hostile templates
render; compiled templates are shared by the jobs that use them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.personalize.templates import (
    CACHE,
    ENV,
    FIELD_BYTES,
    LOOP_ITERATIONS,
    CompiledField,
    RenderLimit,
    _compile,
    cache_lookups,
)
from tests.conftest import make_config
from tests.test_pipeline import Channels, scripted

HOSTILE = {
    "loops": "{% for i in (1..40) %}{% for j in (1..40) %}x{% endfor %}{% endfor %}",
    "range": "{% for i in (1..3000000) %}{{ i }}{% endfor %}",
    "output": "{% for i in (1..900) %}{{ attributes.chunk }}{% endfor %}",
    "namespace": "{% assign s = attributes.chunk %}{% for i in (1..30) %}{% assign s = s | append: s %}{% endfor %}"
    "{{ s }}",
    "number": "{% assign x = 7 %}{% for i in (1..25) %}{% assign x = x | times: x %}{% endfor %}{{ x }}",
}
SCOPE = {"attributes": {"chunk": "y" * 1000}}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("html", [False, True])
def test_each_limit_holds_in_both_renderers(name: str, html: bool) -> None:
    from gateway.personalize.templates import HTML_ENV

    env = HTML_ENV if html else ENV
    compiled = _compile(HOSTILE[name], "$.t", 10**6, env)
    assert compiled.fast is not None  # the compiled path is the one under test
    reference = CompiledField(compiled.source, compiled.template, None, False, env)
    for renderer in (compiled, reference):
        started = time.process_time()
        with pytest.raises(RenderLimit):
            renderer.render(dict(SCOPE))
        assert time.process_time() - started < 0.2


def test_loops_within_the_limit_render() -> None:
    assert LOOP_ITERATIONS >= 1000 and FIELD_BYTES >= 256 * 1024
    ok = _compile("{% for i in (1..10) %}{% for j in (1..100) %}.{% endfor %}{% endfor %}", "$.t", 10**6, ENV)
    assert len(ok.render({})) == 1000


def job(title: str, n: int = 1) -> dict[str, Any]:
    return {
        "campaign": "c",
        "channels": ["alpha"],
        "category": "transactional",
        "variants": [
            {"name": "big", "when": "true", "content": {"push": {"title": title}}},
            {"name": "small", "content": {"push": {"title": "Hi"}}},
        ],
        "recipients": [
            {
                "user_id": f"u{i}",
                "attributes": dict(SCOPE["attributes"]),
                "devices": [{"channel": "alpha", "token": "t"}],
            }
            for i in range(n)
        ],
    }


async def test_a_field_over_a_limit_fails_the_recipient_and_preview_names_it(start, tmp_path) -> None:
    calls: list[Any] = []
    running = await start(make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", lambda d: None, calls)),))
    status, body, _ = await running.post(job(HOSTILE["output"]))
    assert status == 202, body
    decision = (await running.wait(body["job_id"]))["decisions"][0]
    assert (decision["outcome"], decision["reason"]) == ("failed", "render_limit")
    assert "content.push.title" in decision["detail"] and not calls  # no other variant, nothing sent
    async with running.http.post("/v1/preview", json=job(HOSTILE["output"])) as r:
        reply = await r.json()
        assert r.status == 400, reply
    assert reply["error"] == "render_limit" and reply["path"] == "$.variants[0].content.push.title"


async def test_hostile_templates_leave_the_event_loop_free(start, tmp_path) -> None:
    """Planning yields between recipients: while 200 recipients' templates each render
    to their limits, the event loop never stalls 50 ms (measured by a probe task), and
    /healthz answers."""
    running = await start(make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", lambda d: None, [])),))
    title = "".join(HOSTILE[k] for k in ("output", "number"))  # hits the output limit after real work
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.002)
            lags.append(loop.time() - before - 0.002)

    prober = asyncio.create_task(probe())
    async with running.http.post("/v1/preview", json=job(title, 200)) as r:
        assert r.status == 400  # the first recipient already passes the limit
    _, body, _ = await running.post(job(title, 200))
    async with running.http.get("/healthz") as r:
        assert r.status == 200
    await running.wait(body["job_id"], timeout=60)
    stop.set()
    await prober
    assert max(lags) < 0.05, sorted(lags)[-5:]


async def test_jobs_sharing_templates_compile_them_once(start, tmp_path) -> None:
    running = await start(make_config(tmp_path), extra_plugins=(Channels(scripted("alpha", lambda d: None, [])),))
    title = f"Hi {{{{ attributes.chunk | truncate: {time.time_ns() % 1000 + 5} }}}}"  # a template no test used
    before = (CACHE.misses, cache_lookups()[("hit",)])
    for _ in range(5):
        status, body, _ = await running.post(job(title))
        assert status == 202, body
    # Parsed once; the later jobs find it (their whole content part, in one look-up).
    assert CACHE.misses - before[0] == 1 and cache_lookups()[("hit",)] - before[1] >= 4
    async with running.http.get("/metrics") as r:
        text = await r.text()
    assert 'gateway_template_cache_lookups_total{result="hit"}' in text
