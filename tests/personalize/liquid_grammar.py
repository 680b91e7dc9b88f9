"""Generated Liquid templates and recipient data, for the differential fuzzer.

Templates come from a grammar of the Liquid the gateway accepts: text with markup and
entities, outputs over data paths, loop variables and assigned names (defined or not),
literals of every kind, chains of filters with literal and variable arguments (some
undefined), and the tags `if`/`elsif`/`else`, `unless`, `case`/`when`, `for` (ranges,
`limit`, `offset`, `reversed`, `else`, `forloop`), `assign` and `capture`, nested.

Data covers every value class the compiled path's shortcuts tell apart: ints, floats,
numeric strings, Decimals, booleans, nil, blank strings (spaces, tabs, newlines, U+00A0),
lists, dicts, aware and naive datetimes, markup and unicode text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

# -- data ------------------------------------------------------------------------------------
BLANKS = ["", " ", "   ", "\t", "\n", "\u00a0", " \u00a0\t\n "]
WORDS = ["Ana", "R&D", "<b>bold</b>", "&amp;", "O'Neil", 'say "hi"', "Séverine", "李", "1e3", "a,b,c", "x y z"]
NUMERIC_STRINGS = ["12", "3.5", "-7", " 4 ", "0", "1e3", "abc", "12abc", "-0.0"]
TIMES = [
    datetime(2026, 11, 27, 18, 4, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 11, 27, 18, 4),
    datetime(1999, 12, 31, 23, 59, 59),
]
text_values = st.one_of(st.sampled_from(BLANKS + WORDS + NUMERIC_STRINGS), st.text(max_size=8))
numbers = st.one_of(
    st.integers(-1000, 10**6),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 0.5, 2.0, -0.0, 10**15]),
    st.decimals(min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False, places=2),
    st.just(Decimal("3.10")),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text_values, st.sampled_from(TIMES))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["name", "price", "size", "first", "a"]), inner, max_size=3),
    ),
    max_leaves=8,
)
ABSENT = object()
ATTRIBUTES = ["first_name", "nickname", "n", "m", "s", "tags", "d", "flag", "items"]


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    """A recipient's template context, some attributes absent."""
    attributes = {}
    for name in ATTRIBUTES:
        value = draw(st.one_of(st.just(ABSENT), values))
        if value is not ABSENT:
            attributes[name] = value
    event = {
        "count": draw(st.integers(0, 5)),
        "last_at": draw(st.one_of(st.none(), st.sampled_from(TIMES))),
        "properties": {"value": draw(values), "items": draw(st.lists(values, max_size=3))},
    }
    return {
        "user_id": draw(st.sampled_from(["u-1", "u 2", ""])),
        "campaign": "cart",
        "channel": draw(st.sampled_from(["apns", "email", None])),
        "attributes": attributes,
        "events": draw(st.sampled_from([{}, {"cart": event}])),
        "properties": {"price": draw(values), "items": draw(st.lists(values, max_size=3))},
    }


# -- templates -------------------------------------------------------------------------------
DATA_PATHS = [
    *(f"attributes.{a}" for a in ATTRIBUTES),
    "attributes.missing",
    "attributes.items[0]",
    "attributes.items.first",
    "attributes.items.size",
    "attributes.s.size",
    "attributes.first_name.size",
    "events.cart.count",
    "events.cart.last_at",
    "events.cart.properties.value",
    "events.cart.properties.items",
    "events.gone.count",
    "properties.price",
    "properties.items",
    "user_id",
    "campaign",
    "channel",
]
TEXTS = ["", "Hi ", ", ", "<p>", "</p>", "&", "&amp;", "R&D ", "'", '"', "\n", "é", " ", "-", "x", "\r\n"]
LITERALS = [
    "'x'",
    "'<b>'",
    "'R&D'",
    "''",
    "' '",
    '"a,b"',
    "0",
    "1",
    "-3",
    "2.5",
    "true",
    "false",
    "nil",
    "'12'",
]
# name -> argument kinds: "v" any value, "n" a number, "s" a string, "k" a keyword argument
FILTERS: dict[str, list[list[str]]] = {
    "upcase": [[]],
    "downcase": [[]],
    "capitalize": [[]],
    "strip": [[]],
    "lstrip": [[]],
    "rstrip": [[]],
    "escape": [[]],
    "escape_once": [[]],
    "strip_html": [[]],
    "newline_to_br": [[]],
    "url_encode": [[]],
    "size": [[]],
    "first": [[]],
    "last": [[]],
    "reverse": [[]],
    "sort": [[]],
    "uniq": [[]],
    "compact": [[]],
    "abs": [[]],
    "ceil": [[]],
    "floor": [[]],
    "default": [[], ["v"], ["v", "k"]],
    "append": [["v"]],
    "prepend": [["v"]],
    "remove": [["v"]],
    "replace": [["v", "v"]],
    "replace_first": [["v", "v"]],
    "replace_last": [["v", "v"]],
    "truncate": [["n"], ["n", "s"]],
    "truncatewords": [["n"]],
    "join": [[], ["v"]],
    "split": [["v"]],
    "slice": [["n"], ["n", "n"]],
    "plus": [["v"]],
    "minus": [["v"]],
    "times": [["v"]],
    "divided_by": [["v"]],
    "modulo": [["v"]],
    "round": [[], ["v"]],
    "at_least": [["v"]],
    "at_most": [["v"]],
    "date": [["s"]],
    "map": [["s"]],
    "where": [["s"], ["s", "v"]],
    "concat": [["v"]],
    "sum": [[]],
}
NUMBERS = ["0", "1", "2", "-1", "3.5", "'2'", "true", "nil", "attributes.n", "attributes.missing"]
FORMATS = ["'%Y-%m-%d'", "'%b %-d, %H:%M %Z'", "'%s'", "''", "attributes.s"]


@st.composite
def templates(draw: st.DrawFn, depth: int = 2) -> str:
    return draw(_block(depth, ("",)))


def _block(depth: int, names: tuple[str, ...]) -> st.SearchStrategy[str]:
    @st.composite
    def block(draw: st.DrawFn) -> str:
        out = []
        local = list(names)
        for _ in range(draw(st.integers(1, 4))):
            node, new_name = draw(_node(depth, tuple(local)))
            out.append(node)
            if new_name:
                local.append(new_name)
        return "".join(out)

    return block()


def _node(depth: int, names: tuple[str, ...]) -> st.SearchStrategy[tuple[str, str | None]]:
    leaves = [
        st.sampled_from(TEXTS).map(lambda t: (t, None)),
        _output(names).map(lambda t: (t, None)),
        _assign(names),
    ]
    if depth <= 0:
        return st.one_of(*leaves)
    inner = _block(depth - 1, names)
    return st.one_of(
        *leaves,
        _if(inner, names).map(lambda t: (t, None)),
        _case(inner, names).map(lambda t: (t, None)),
        _for(depth, names).map(lambda t: (t, None)),
        _capture(inner),
    )


def _expression(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    local = [n for n in names if n]
    choices = [st.sampled_from(DATA_PATHS), st.sampled_from(LITERALS)]
    if local:
        choices.append(st.sampled_from(local))
    if "item" in local:
        choices.append(st.sampled_from(["item.name", "item.price", "item.size", "item.first"]))
    if any(n.startswith("loop") for n in local) or "item" in local:
        choices.append(
            st.sampled_from(
                [
                    "forloop.index",
                    "forloop.first",
                    "forloop.last",
                    "forloop.rindex0",
                    "forloop.length",
                    # in an outermost loop, parentloop is undefined: a missing value
                    "forloop.parentloop.index",
                    "forloop.parentloop.last",
                    "forloop.parentloop.rindex",
                ]
            )
        )
    return st.one_of(*choices)


@st.composite
def _filter(draw: st.DrawFn, names: tuple[str, ...]) -> str:
    name = draw(st.sampled_from(sorted(FILTERS)))
    kinds = draw(st.sampled_from(FILTERS[name]))
    args = []
    for kind in kinds:
        if kind == "n":
            args.append(draw(st.sampled_from(NUMBERS)))
        elif kind == "s":
            args.append(draw(st.sampled_from(FORMATS if name == "date" else ["'name'", "'price'", "'x'", "', '"])))
        elif kind == "k":
            args.append(f"allow_false: {draw(st.sampled_from(['true', 'false', 'attributes.flag']))}")
        else:
            args.append(draw(_expression(names)))
    return f" | {name}" + (": " + ", ".join(args) if args else "")


@st.composite
def _output(draw: st.DrawFn, names: tuple[str, ...]) -> str:
    filters = "".join(draw(st.lists(_filter(names), max_size=3)))
    return "{{ " + draw(_expression(names)) + filters + " }}"


@st.composite
def _assign(draw: st.DrawFn, names: tuple[str, ...]) -> tuple[str, str | None]:
    name = draw(st.sampled_from(["a", "b", "total"]))
    filters = "".join(draw(st.lists(_filter(names), max_size=2)))
    return "{% assign " + name + " = " + draw(_expression(names)) + filters + " %}", name


@st.composite
def _condition(draw: st.DrawFn, names: tuple[str, ...]) -> str:
    """`empty` and `blank` only where Liquid allows them: compared with `==` / `!=`."""
    operand = _expression(names)
    left = draw(operand)
    form = draw(st.sampled_from(["bare", "compare", "emptiness", "contains", "and", "or"]))
    if form == "bare":
        return left
    if form == "emptiness":
        return f"{left} {draw(st.sampled_from(['==', '!=']))} {draw(st.sampled_from(['empty', 'blank']))}"
    right = draw(operand)
    if form == "compare":
        return f"{left} {draw(st.sampled_from(['==', '!=', '<', '>', '<=', '>=']))} {right}"
    if form == "contains":
        return f"{left} contains {right}"
    return f"{left} {form} {right}"


@st.composite
def _if(draw: st.DrawFn, inner: st.SearchStrategy[str], names: tuple[str, ...]) -> str:
    tag = draw(st.sampled_from(["if", "unless"]))
    out = "{% " + tag + " " + draw(_condition(names)) + " %}" + draw(inner)
    if tag == "if":
        for _ in range(draw(st.integers(0, 2))):
            out += "{% elsif " + draw(_condition(names)) + " %}" + draw(inner)
    if draw(st.booleans()):
        out += "{% else %}" + draw(inner)
    return out + "{% end" + tag + " %}"


@st.composite
def _case(draw: st.DrawFn, inner: st.SearchStrategy[str], names: tuple[str, ...]) -> str:
    out = "{% case " + draw(_expression(names)) + " %}"
    for _ in range(draw(st.integers(1, 3))):
        whens = draw(st.lists(st.one_of(st.sampled_from(LITERALS), _expression(names)), min_size=1, max_size=2))
        out += "{% when " + ", ".join(whens) + " %}" + draw(inner)
    if draw(st.booleans()):
        out += "{% else %}" + draw(inner)
    return out + "{% endcase %}"


@st.composite
def _for(draw: st.DrawFn, depth: int, names: tuple[str, ...]) -> str:
    var = draw(st.sampled_from(["item", "loop_x"]))
    iterable = draw(
        st.one_of(
            st.sampled_from(
                ["attributes.items", "attributes.tags", "attributes.s", "properties.items", "attributes.missing"]
            ),
            st.sampled_from(["(1..3)", "(0..0)", "(2..1)", "(1..attributes.n)"]),
            _expression(names),
        )
    )
    options = ""
    if draw(st.booleans()):
        options += f" limit: {draw(st.sampled_from(['0', '1', '2', '-1', 'attributes.n', 'nil']))}"
    if draw(st.booleans()):
        options += f" offset: {draw(st.sampled_from(['0', '1', '3', '-2', 'attributes.n']))}"
    if draw(st.booleans()):
        options += " reversed"
    body = draw(_block(depth - 1, (*names, var)))
    out = "{% for " + var + " in " + iterable + options + " %}" + body
    if draw(st.booleans()):
        out += "{% else %}" + draw(_block(depth - 1, names))
    return out + "{% endfor %}"


@st.composite
def _capture(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> tuple[str, str | None]:
    name = draw(st.sampled_from(["c", "a"]))
    return "{% capture " + name + " %}" + draw(inner) + "{% endcapture %}", name
