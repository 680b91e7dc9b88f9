"""The compiled renderer equals python-liquid's, on generated recipient data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.personalize.compiler import Missing
from gateway.personalize.conditions import compile_condition
from gateway.personalize.templates import ENV, HTML_ENV, CompiledField, RenderFailed, _compile
from gateway.testing.templates import CORPUS, example_templates

MISSING = object()

text = st.one_of(st.just(""), st.just("   "), st.just("\t\n"), st.text(max_size=12),
                 st.sampled_from(["Ana", "Mason", "Séverine", "<b>x</b>", "cart & co", "O'Neil", "李"]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 10**6), st.floats(-1e6, 1e6, allow_nan=False),
                   text)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), strategy)


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict in which each field may be absent."""
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING})


contexts = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u-1", "u-2"]),
    "campaign": st.just("cart-2026"),
    "channel": st.sampled_from(["apns", "email", "speaker"]),
    "attributes": obj(
        first_name=st.one_of(text, scalar), nickname=st.one_of(text, scalar),
        language=st.sampled_from(["fr", "en", "es", ""]),
        loyalty_member=st.one_of(st.booleans(), st.none(), text), favorite_brand=st.one_of(text, st.none()),
        tier=st.sampled_from(["gold", "silver", "", None]), points=st.one_of(st.integers(-10, 10**5), text),
        tags=st.one_of(st.lists(st.sampled_from(["vip", "new", "churn"]), max_size=3), text, st.none())),
    "events": obj(cart_abandoned=obj(
        count=st.integers(0, 50), last_at=st.one_of(st.none(), st.just(datetime(2026, 11, 27, 18, 4, tzinfo=UTC))),
        properties=obj(value=st.one_of(st.floats(0, 5000, allow_nan=False), st.integers(0, 5000), text, st.none()),
                       currency=st.sampled_from(["EUR", "USD", "", "  "]),
                       items=st.lists(st.one_of(text, st.integers()), max_size=4)))),
    "properties": obj(
        order_id=st.one_of(st.sampled_from(["A-77120", ""]), st.integers(0, 99999)), carrier=text, tracking=text,
        eta=st.sampled_from(["2026-12-01", "2026-11-30T10:00:00Z", "not a date", ""]),
        headline=text, message=text, items=st.lists(st.one_of(text, st.integers(), st.none()), max_size=4),
        nested=st.dictionaries(st.sampled_from(["a", "b"]), scalar, max_size=2)),
})


def outcome(render: Any) -> tuple[str, str]:
    """('ok', text) | ('missing', path) | ('error', '')."""
    try:
        return "ok", render()
    except Missing as exc:
        # python-liquid's message for a list index names no path; ours names the list
        return "missing", "index out of range" if "index out of range" in str(exc) else exc.path
    except RenderFailed:
        return "error", ""


def compiled_and_reference(name: str, source: str) -> tuple[CompiledField, CompiledField]:
    env = HTML_ENV if ("html" in name or name == "escape_html") else ENV
    compiled = _compile(source, name, 10**6, env)
    reference = CompiledField(source, compiled.template, None, compiled.uses_channel)  # python-liquid's renderer
    return compiled, reference


TEMPLATES = {**CORPUS, **example_templates()}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=contexts)
def test_compiled_equals_python_liquid(name: str, ctx: dict[str, Any]) -> None:
    compiled, reference = compiled_and_reference(name, TEMPLATES[name])
    got = outcome(lambda: compiled.render(dict(ctx)))
    expected = outcome(lambda: reference.render(dict(ctx)))
    assert got[0] == expected[0], (got, expected)
    if got[0] == "ok":
        assert got[1] == expected[1]
    if got[0] == "missing":  # same path named, modulo python-liquid's quoting of roots
        assert got[1].strip("'") == expected[1].strip("'")


def test_most_of_the_corpus_is_compiled() -> None:
    fallbacks = [n for n, s in TEMPLATES.items() if compiled_and_reference(n, s)[0].fast is None]
    assert fallbacks == [], fallbacks
    assert all(compiled_and_reference(n, s)[0].fast for n, s in example_templates().items())


CONDITIONS = [
    "events.cart_abandoned.properties.value >= 200",
    "attributes.loyalty_member == true",
    "attributes.language == 'fr' and attributes.points > 100",
    "attributes.tier == 'gold' or attributes.loyalty_member",
    "attributes.tags contains 'vip'",
    "attributes.first_name != blank",
    "attributes.loyalty_member != true",
    "attributes.points < 10 or attributes.points >= 5000 and attributes.language != 'es'",
    "events.cart_abandoned.count <= 1",
    "attributes.favorite_brand == empty",
]


@pytest.mark.parametrize("source", CONDITIONS)
@settings(max_examples=150, deadline=None)
@given(ctx=contexts)
def test_conditions_equal_python_liquid_when_the_data_is_there(source: str, ctx: dict[str, Any]) -> None:
    """Where every path exists and types compare, `when` is python-liquid's `if`."""
    reference = ENV.from_string("{% if " + source + " %}1{% endif %}")
    try:
        expected = reference.render(**ctx) == "1"
    except Exception:
        return  # missing paths and type errors are covered by our own rule, below
    assert compile_condition(source, ENV)(ctx) is expected
