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

text = st.one_of(
    st.just(""),
    st.just("   "),
    st.just("\t\n"),
    st.text(max_size=12),
    st.sampled_from(["Ana", "Mason", "Séverine", "<b>x</b>", "cart & co", "O'Neil", "李"]),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-1000, 10**6), st.floats(-1e6, 1e6, allow_nan=False), text)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(MISSING), strategy)


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict in which each field may be absent."""
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not MISSING}
    )


contexts = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u-1", "u-2"]),
        "campaign": st.just("cart-2026"),
        "channel": st.sampled_from(["apns", "email", "speaker"]),
        "attributes": obj(
            first_name=st.one_of(text, scalar),
            nickname=st.one_of(text, scalar),
            language=st.sampled_from(["fr", "en", "es", ""]),
            loyalty_member=st.one_of(st.booleans(), st.none(), text),
            favorite_brand=st.one_of(text, st.none()),
            tier=st.sampled_from(["gold", "silver", "", None]),
            points=st.one_of(st.integers(-10, 10**5), text),
            tags=st.one_of(st.lists(st.sampled_from(["vip", "new", "churn"]), max_size=3), text, st.none()),
        ),
        "events": obj(
            cart_abandoned=obj(
                count=st.integers(0, 50),
                last_at=st.one_of(st.none(), st.just(datetime(2026, 11, 27, 18, 4, tzinfo=UTC))),
                properties=obj(
                    value=st.one_of(st.floats(0, 5000, allow_nan=False), st.integers(0, 5000), text, st.none()),
                    currency=st.sampled_from(["EUR", "USD", "", "  "]),
                    items=st.lists(st.one_of(text, st.integers()), max_size=4),
                ),
            )
        ),
        "properties": obj(
            order_id=st.one_of(st.sampled_from(["A-77120", ""]), st.integers(0, 99999)),
            carrier=text,
            tracking=text,
            eta=st.sampled_from(["2026-12-01", "2026-11-30T10:00:00Z", "not a date", ""]),
            headline=text,
            message=text,
            items=st.lists(st.one_of(text, st.integers(), st.none()), max_size=4),
            nested=st.dictionaries(st.sampled_from(["a", "b"]), scalar, max_size=2),
        ),
    }
)


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


# The compiler's shortcuts (gateway.personalize.fastfilters, the loop and `forloop`
# lookups, constant branches, HTML output): templates aimed at each, on values of every
# class those shortcuts tell apart.
number_like = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.booleans(),
    st.none(),
    st.sampled_from(["12", "3.5", "-7", "abc", "", " 4 ", "1e3"]),
)
dates = st.one_of(
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(["2026-12-01", "2026-11-30T10:00:00Z", "1 March 2027", "not a date", "", "1700000000"]),
    st.integers(0, 2 * 10**9),
    st.none(),
    st.booleans(),
)
sequences = st.one_of(
    st.lists(st.one_of(text, st.integers()), max_size=5),
    text,
    st.none(),
    st.integers(),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(), max_size=3),
)
shortcut_contexts = st.fixed_dictionaries(
    {
        "user_id": st.just("u-1"),
        "campaign": st.just("c"),
        "channel": st.just("email"),
        "attributes": obj(n=number_like, d=dates, s=sequences, t=sequences, name=st.one_of(text, scalar)),
        "events": st.just({}),
        "properties": st.just({}),
    }
)

SHORTCUTS = {
    "times_float": "{{ attributes.n | times: 0.1 }}",
    "times_int": "{{ attributes.n | times: 3 }}",
    "times_string_arg": "{{ attributes.n | times: '2.5' }}",
    "times_bad_arg": "{{ attributes.n | times: 'x' }}",
    "plus_minus": "{{ attributes.n | plus: 1 }} {{ attributes.n | minus: 0.25 }} {{ attributes.n | plus: -7 }}",
    "round": "{{ attributes.n | round }} {{ attributes.n | round: 2 }} {{ attributes.n | round: 0 }}"
    " {{ attributes.n | round: -1 }} {{ attributes.n | round: 1.7 }} {{ attributes.n | round: '3' }}",
    "round_bad_arg": "{{ attributes.n | round: 'x' }}",
    "math_chain": "{{ attributes.n | times: 1.19 | round: 2 | default: 'none' }}",
    "date": "{{ attributes.d | date: '%A %-d %B %Y %H:%M' }}",
    "date_tz": "{{ attributes.d | date: '%Y-%m-%d %z %Z' }}",
    "date_default": "{{ attributes.d | date: '%b %d' | default: 'soon' }}",
    "forloop_all": "{% for x in attributes.s %}{{ forloop.index }}/{{ forloop.index0 }}/{{ forloop.rindex }}/"
    "{{ forloop.rindex0 }}/{{ forloop.first }}/{{ forloop.last }}/{{ forloop.length }}/"
    "{{ forloop.name }}:{{ x }};{% endfor %}",
    "forloop_parent": "{% for x in attributes.s %}{% for y in attributes.t %}{{ forloop.parentloop.index }}"
    "{{ forloop.parentloop.last }}{{ forloop.index }}{% endfor %}{{ forloop.parentloop }}"
    "{% endfor %}",
    "loop_slices": "{% for x in attributes.s limit: 2 %}{{ x }}{% else %}none{% endfor %}|"
    "{% for x in attributes.s offset: 1 reversed %}{{ x }}{% endfor %}|"
    "{% for x in attributes.s reversed %}{{ x }}{% endfor %}",
    "loop_shadowing": "{% for name in attributes.s %}{{ name }}{% endfor %}{{ attributes.name | default: '-' }}"
    "{% for attributes in attributes.s %}.{% endfor %}{{ attributes.name | default: '-' }}",
    "constant_branches": "{% if attributes.n %}yes{% else %}no{% endif %}{% unless attributes.s %}empty{% endunless %}"
    "{% if attributes.n > 2 %}big{% elsif attributes.n %}small{% endif %}",
    "blank_blocks": "{% if attributes.n %}  {% endif %}[{% for x in attributes.s %} {% endfor %}]",
    "case_literals": "{% case attributes.n %}{% when 1, 2 %}a{% when '12' %}b{% when nil %}n{% when 3.5 %}f"
    "{% else %}e{% endcase %}{% case attributes.name %}{% when 'Ana', true %}A{% endcase %}",
    "case_paths": "{% case attributes.name %}{% when attributes.s %}s{% when attributes.n, 'Ana' %}n{% else %}e"
    "{% endcase %}",
    "contains": "{% if attributes.s contains 'a' %}1{% endif %}{% if attributes.s contains 3 %}2{% endif %}"
    "{% if attributes.name contains 'n' %}3{% endif %}{% if attributes.s contains 2.5 %}4{% endif %}",
    "index": "{{ attributes.s[0] }}|{{ attributes.s[-1] | default: 'x' }}|"
    "{% for p in attributes.s %}{{ p[1] | default: '' }}{% endfor %}",
    "html_escape": "<p>{{ attributes.name | escape }} {{ attributes.name }} {{ attributes.name | upcase }}</p>",
    "html_date": "<p>{{ attributes.d | date: '%b <%d>' }}</p>",
}


@pytest.mark.parametrize("name", sorted(SHORTCUTS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ctx=shortcut_contexts)
def test_compiler_shortcuts_equal_python_liquid(name: str, ctx: dict[str, Any]) -> None:
    compiled, reference = compiled_and_reference(name, SHORTCUTS[name])
    assert compiled.fast is not None, "expected the compiled renderer, not the fallback"
    got = outcome(lambda: compiled.render(dict(ctx)))
    expected = outcome(lambda: reference.render(dict(ctx)))
    assert got[0] == expected[0], (got, expected)
    if got[0] == "ok":
        assert got[1] == expected[1]
