"""Compiling python-liquid parse trees into Python closures.

python-liquid interprets its parse tree on every render: a render context, node dispatch,
buffer writes, undefined objects. For a push title that is ~30 us; the same logic as
plain Python is ~1 us. This module walks the tree once per job and builds closures over
the recipient's scope (a dict), so per-recipient rendering is direct dict lookups and
calls to python-liquid's *own* filter functions, comparison helpers and stringifier:
what is compiled produces python-liquid's output by construction, and the property tests
compare the two on generated data.

Where a per-item cost would dominate, the closures take exact shortcuts for the plain
classes (str, int, float, list, dict) and fall back to python-liquid's helpers for the
rest: literal-argument fast paths for a few filters (`fastfilters.py`), `forloop.*` read
straight from the ForLoop, text joined in rather than called, `{% if %}` with two text
branches as one test. `tests/personalize/test_equivalence.py` aims generated data at
each shortcut.

Anything outside the compiled subset (ternaries, break/continue, `offset: continue`,
`cols`, filters that need the render context) makes `compile_template` return None, and
the caller renders that template with python-liquid itself: the fallback is transparent.

Missing data follows python-liquid's StrictDefaultUndefined: a missing path may flow
through `assign` and into `default`; any other use (output, another filter, a test in
`if`/`unless`) raises `Missing`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence, Sized
from functools import partial
from typing import Any

from liquid import Markup
from liquid.ast import BlockNode
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.builtin.expressions.arguments import KeywordArgument
from liquid.builtin.expressions.logical import (
    BooleanExpression,
    ContainsExpression,
    EqExpression,
    GeExpression,
    GtExpression,
    LeExpression,
    LogicalAndExpression,
    LogicalNotExpression,
    LogicalOrExpression,
    LtExpression,
    NeExpression,
    _contains,
    _eq,
    _le,
    _lt,
    is_truthy,
)
from liquid.builtin.expressions.primitive import (
    Blank,
    Empty,
    FalseLiteral,
    FloatLiteral,
    IntegerLiteral,
    Nil,
    RangeLiteral,
    StringLiteral,
    TrueLiteral,
)
from liquid.builtin.output import OutputNode
from liquid.builtin.tags.assign_tag import AssignNode
from liquid.builtin.tags.capture_tag import CaptureNode
from liquid.builtin.tags.case_tag import CaseNode, MultiExpressionBlockNode
from liquid.builtin.tags.comment_tag import CommentNode
from liquid.builtin.tags.for_tag import BreakNode, ContinueNode, ForLoop, ForNode
from liquid.builtin.tags.if_tag import IfNode
from liquid.builtin.tags.unless_tag import UnlessNode
from liquid.environment import Environment
from liquid.exceptions import LiquidTypeError
from liquid.filter import string_filter
from liquid.limits import to_int
from liquid.stringify import to_liquid_string
from liquid.template import BoundTemplate
from liquid.undefined import StrictDefaultUndefined
from liquid.undefined import Undefined as LiquidUndefined
from markupsafe import escape

from gateway.personalize.blank import BLANK, guard_path, is_blank
from gateway.personalize.fastfilters import SLOW, fast_filter
from gateway.personalize.filters import default as default_filter
from gateway.personalize.namespace import size_of

log = logging.getLogger(__name__)
Scope = dict[str, Any]
Eval = Callable[[Scope], Any]
Render = Callable[[Scope], str]


class Missing(Exception):
    """The recipient lacks `path` (e.g. `attributes.first_name`)."""

    def __init__(self, path: str, hint: str = "is undefined"):
        self.path = path
        super().__init__(f"{path} {hint}")


class Undefined:
    """A missing value on its way to `default` (or to raising Missing)."""

    __slots__ = ("hint", "path")

    def __init__(self, path: str, hint: str = "is undefined"):
        self.path = path
        self.hint = hint

    def fail(self) -> Missing:
        return Missing(self.path, self.hint)

    def liquid(self) -> StrictDefaultUndefined:
        """python-liquid's own undefined for this path: what its filters get, so a filter
        that never touches an undefined argument (`default: x`) renders as python-liquid."""
        message = self.hint if self.hint == "index out of range" else f"{self.path} {self.hint}"
        return StrictDefaultUndefined(self.path, token=None, hint=message)


def _liquid(value: Any) -> Any:
    return value.liquid() if isinstance(value, Undefined) else value


def _ours(value: Any) -> Any:
    """A filter's result: python-liquid's undefined (`default` returning an undefined
    argument, `first` of nothing) back as ours, which the closures test with `__class__`
    (a strict one raises on that)."""
    if not issubclass(type(value), LiquidUndefined):
        return value
    name, hint = value.name, value.hint or "is undefined"
    return Undefined(name, hint.removeprefix(f"{name} ") if hint.startswith(f"{name} ") else hint)


class Unsupported(Exception):
    """A construct outside the compiled subset: render with python-liquid instead."""


class OverLimit(Exception):
    """A render limit tripped (as python-liquid counts it, or sooner): the caller renders
    with python-liquid, whose limits then decide the outcome."""


def compile_template(template: BoundTemplate, env: Environment) -> Render | None:
    """A closure rendering `template` for a scope, or None to fall back to python-liquid:
    for a construct outside the compiled subset, and for anything compiling raises (a
    shortcut meeting an argument it did not foresee must cost speed, never a job)."""
    try:
        return _Compiler(env).template(template.nodes)
    except Unsupported:
        return None
    except Exception:
        log.warning("a template could not be compiled; python-liquid renders it", exc_info=True)
        return None


class _Compiler:
    def __init__(self, env: Environment):
        self.env = env
        self.autoescape = env.autoescape
        self.suppress_blank = env.suppress_blank_control_flow_blocks
        self.loop_limit = env.loop_iteration_limit
        self.output_limit = getattr(env, "field_output_limit", None) or env.output_stream_limit
        self.namespace_limit = getattr(env, "field_namespace_limit", None) or env.local_namespace_limit

    # -- nodes -----------------------------------------------------------------------
    def template(self, nodes: Sequence[Any]) -> Render:
        parts = [self.node(n) for n in nodes]
        # Loops restore their own variables; only `assign` must be kept out of the caller's scope.
        assigns = any(isinstance(n, (AssignNode, CaptureNode)) for n in _walk(nodes))
        texts = [p for p in parts if isinstance(p, str)]
        if len(texts) == len(parts):  # no expressions at all: a constant
            constant = "".join(texts)
            return lambda scope: constant
        body = self._join(parts)
        if assigns:
            return lambda scope: body(dict(scope))
        return body

    def _join(self, parts: list[Any]) -> Render:
        joined = self._join_parts(parts)
        return joined if callable(joined) else (lambda scope: joined)

    @staticmethod
    def _join_parts(parts: list[Any]) -> Render | str:
        """Concatenation of text and renderers, as a string when it is all text. Each
        call costs as much as a dict lookup, so text is joined in, not called."""
        merged: list[Any] = []
        for p in parts:
            if isinstance(p, str):
                if not p:
                    continue
                if merged and isinstance(merged[-1], str):
                    merged[-1] += p
                    continue
            merged.append(p)
        if not merged:
            return ""
        if len(merged) == 1:
            return merged[0]
        if len(merged) == 2:
            a, b = merged
            if isinstance(a, str):
                return lambda scope: a + b(scope)
            if isinstance(b, str):
                return lambda scope: a(scope) + b
            return lambda scope: a(scope) + b(scope)
        if len(merged) == 3 and isinstance(merged[1], str) and callable(merged[0]) and callable(merged[2]):
            a, t, c = merged
            return lambda scope: a(scope) + t + c(scope)
        fns = [(lambda s, _t=p: _t) if isinstance(p, str) else p for p in merged]
        return lambda scope: "".join([f(scope) for f in fns])

    def node(self, node: Any) -> Render | str:
        if isinstance(node, ContentNode):
            return node.text
        if isinstance(node, OutputNode):
            return self.output(node.expression)
        if isinstance(node, CommentNode):
            return ""
        if isinstance(node, AssignNode):
            return self.assign(node)
        if isinstance(node, CaptureNode):
            return self.capture(node)
        if isinstance(node, IfNode):
            return self.conditional(node, negate_first=False)
        if isinstance(node, UnlessNode):
            return self.conditional(node, negate_first=True)
        if isinstance(node, CaseNode):
            return self.case(node)
        if isinstance(node, ForNode):
            return self.for_loop(node)
        raise Unsupported(type(node).__name__)

    def block(self, block: BlockNode | None) -> Render | str:
        """A block's renderer, or its text when it has no expressions."""
        if block is None:
            return ""
        body = self._join_parts([self.node(n) for n in block.nodes])
        if self.suppress_blank and block.blank:
            # python-liquid runs a blank block for its side effects and drops its output.
            return "" if isinstance(body, str) else (lambda scope: (body(scope), "")[1])
        return body

    def output(self, expression: Any) -> Render:
        """The output's text, always a plain `str` (a `Markup` joined to the template's own
        text would escape that text). Blank data is missing data (`blank.py`)."""
        value = self.filtered(expression)
        autoescape = self.autoescape
        guard = guard_path(expression)

        def render(scope: Scope) -> str:
            v = value(scope)
            cls = v.__class__
            if cls is str:
                if guard is not None and (not v or v.isspace()):
                    raise Missing(guard, BLANK)
                return str(escape(v)) if autoescape else v
            if not autoescape and (cls is int or cls is float):
                return str(v)  # what to_liquid_string does for numbers, without its type checks
            if isinstance(v, Undefined):
                raise v.fail()
            if guard is not None and is_blank(v):
                raise Missing(guard, BLANK)
            return str(to_liquid_string(v, autoescape))

        return render

    def assign(self, node: AssignNode) -> Render:
        name = str(node.name)
        value = self.filtered(node.expression)
        limit = self.namespace_limit

        def render(scope: Scope) -> str:
            scope[name] = v = value(scope)
            if limit:
                _account(scope, name, v, limit)
            return ""

        return render

    def capture(self, node: CaptureNode) -> Render:
        """The block's text assigned to a name (Markup in an HTML environment, as
        python-liquid assigns it)."""
        name = str(node.name)
        body = _callable(self.block(node.block))
        limit, autoescape = self.namespace_limit, self.autoescape

        def render(scope: Scope) -> str:
            text = body(scope)
            scope[name] = v = Markup(text) if autoescape else text
            if limit:
                _account(scope, name, v, limit)
            return ""

        return render

    def conditional(self, node: IfNode | UnlessNode, negate_first: bool) -> Render:
        first = self.condition(node.condition)
        consequence = self.block(node.consequence)
        alternatives = [(self.condition(a.expression), _callable(self.block(a.block))) for a in node.alternatives]
        default = self.block(node.default)
        if not alternatives and isinstance(consequence, str) and isinstance(default, str):
            # the usual `{% if x %}text{% else %}other{% endif %}`: one test, no calls
            yes, no = (default, consequence) if negate_first else (consequence, default)
            return lambda scope: yes if first(scope) else no
        then, otherwise = _callable(consequence), _callable(default)

        def render(scope: Scope) -> str:
            if first(scope) is not negate_first:
                return then(scope)
            for test, block in alternatives:
                if test(scope):
                    return block(scope)
            return otherwise(scope)

        return render

    def case(self, node: CaseNode) -> Render:
        subject = self.primitive(node.expression)
        literal_whens = all(
            all(_is_literal(e) for e in b.expression.expressions)
            for b in node.blocks
            if isinstance(b, MultiExpressionBlockNode)
        )
        # (whens, body): whens None for an `else`; with literal `when`s (the usual
        # `{% when 'fr' %}`) the values themselves, else their evaluators
        blocks: list[tuple[list[Any] | None, Render | str]] = []
        for block in node.blocks:
            if isinstance(block, MultiExpressionBlockNode):
                whens = [self.primitive(e) for e in block.expression.expressions]
                blocks.append(([w({}) for w in whens] if literal_whens else whens, self.block(block.block)))
            else:  # an `else`
                blocks.append((None, self.block(block)))

        def render(scope: Scope) -> str:
            out: list[str] = []
            matched = False
            for whens, body in blocks:
                if whens is None:
                    if not matched:  # every `else` renders while no `when` has matched
                        out.append(body if isinstance(body, str) else body(scope))
                    continue
                # python-liquid evaluates the subject again for each `when` (a body before
                # may have assigned it); an undefined one fails in its comparison
                v = subject(scope)
                v_cls = v.__class__
                plain = v_cls in _PLAIN
                lv = _liquid(v)
                # python-liquid tests every value of a `when` first, then renders its body
                # once per match, in place
                hits = 0
                for when in whens:
                    if literal_whens:
                        w = when
                        hits += (v == w) if (plain and w.__class__ is v_cls) else _eq(lv, w)
                    else:
                        w = when(scope)
                        hits += (v == w) if (plain and w.__class__ is v_cls) else _eq(lv, _liquid(w))
                if hits:
                    matched = True
                    for _ in range(hits):
                        out.append(body if isinstance(body, str) else body(scope))
            return "".join(out)

        return render

    def for_loop(self, node: ForNode) -> Render:
        expr = node.expression
        name = str(expr.identifier)
        _check_loop_compiles(node, name)
        iterable = self.primitive(expr.iterable)
        limit = self.primitive(expr.limit) if expr.limit is not None else None
        offset = self.primitive(expr.offset) if expr.offset is not None else None
        loop = _Loop(
            name, f"{name}-{expr.iterable}", _callable(self.block(node.block)), self.loop_limit, self.output_limit
        )
        reverse = expr.reversed
        default = _callable(self.block(node.default))
        string_sequences = self.env.string_sequences
        whole = limit is None and offset is None and not reverse
        loop_limit = self.loop_limit

        def render(scope: Scope) -> str:
            obj = _defined(iterable(scope))
            if whole and obj.__class__ is list:  # the usual loop: every item of a list
                return loop.run(scope, obj, len(obj)) if obj else default(scope)
            items, length = _to_iter(obj, string_sequences)
            stop_at = None if limit is None else _to_int(_defined(limit(scope)))
            start = int(_to_int(_defined(offset(scope))) or 0) if offset is not None else 0
            seq = _loop_window(items, length, start, stop_at, loop_limit)
            if not seq:
                return default(scope)
            if reverse:
                seq.reverse()
            return loop.run(scope, seq, len(seq))

        return render

    # -- expressions -----------------------------------------------------------------
    def filtered(self, expression: Any) -> Eval:
        if not isinstance(expression, FilteredExpression):
            raise Unsupported(type(expression).__name__)
        value = self.primitive(expression.left)
        for f in expression.filters or ():
            value = self.filter(value, f)
        return value

    def filter(self, value: Eval, f: Any) -> Eval:
        func = self.env.filters.get(f.name)
        if func is None or getattr(func, "with_context", False):
            raise Unsupported(f"filter {f.name}")
        env_kwargs = {"environment": self.env} if getattr(func, "with_environment", False) else {}
        positional = [a.value for a in f.args if not isinstance(a, KeywordArgument)]
        keywords = {a.name: a.value for a in f.args if isinstance(a, KeywordArgument)}
        if all(_is_literal(e) for e in (*positional, *keywords.values())):
            return self._constant_args_filter(
                value,
                f.name,
                func,
                [self.primitive(e)({}) for e in positional],
                {k: self.primitive(e)({}) for k, e in keywords.items()},
                env_kwargs,
            )
        pos = [self.primitive(e) for e in positional]
        kws = {k: self.primitive(e) for k, e in keywords.items()}
        is_default = func is default_filter
        if env_kwargs:
            func = partial(func, **env_kwargs)
        if len(pos) == 1 and not kws and not is_default:  # the usual `| append: x`, `| plus: y`
            (arg,) = pos

            def apply_one(scope: Scope) -> Any:
                v = value(scope)
                a = arg(scope)
                return _ours(
                    func(v.liquid() if v.__class__ is Undefined else v, a.liquid() if a.__class__ is Undefined else a)
                )

            return apply_one

        def apply(scope: Scope) -> Any:
            v = value(scope)
            args = [p(scope) for p in pos]
            kwargs = {k: p(scope) for k, p in kws.items()}
            if isinstance(v, Undefined) and is_default and len(args) <= 1 and set(kwargs) <= {"default_"}:
                return args[0] if args else kwargs.get("default_", "")  # StrictDefaultUndefined's `default`
            # An undefined value or argument goes in as python-liquid's own, and fails (or
            # not) where python-liquid's filter touches it.
            return _ours(func(_liquid(v), *map(_liquid, args), **{k: _liquid(a) for k, a in kwargs.items()}))

        return apply

    def _constant_args_filter(
        self, value: Eval, name: str, func: Any, args: list[Any], kwargs: dict[str, Any], env_kwargs: dict[str, Any]
    ) -> Eval:
        """The usual case (`default: 'there'`, `truncate: 40`, `upcase`): arguments are
        literals, folded once; string filters skip their wrapper for str values."""
        if func is default_filter and set(kwargs) <= {"default_"} and len(args) <= 1:
            fallback = args[0] if args else kwargs.get("default_", "")

            def apply_default(scope: Scope) -> Any:
                v = value(scope)
                if v.__class__ is str:
                    return v if v and not v.isspace() else fallback
                if isinstance(v, Undefined):
                    return fallback
                return func(v, fallback)

            return apply_default
        if name == "default":
            fallback = args[0] if args else kwargs.get("default_", "")
            all_kwargs = {**kwargs, **env_kwargs}

            def apply_default_general(scope: Scope) -> Any:
                return _ours(func(_liquid(value(scope)), *args, **all_kwargs))

            return apply_default_general
        all_kwargs = {**kwargs, **env_kwargs}
        quick = fast_filter(func, args, kwargs, self.env)
        if quick is not None:
            slow_quick = partial(func, **all_kwargs) if all_kwargs else func

            def apply_quick(scope: Scope) -> Any:
                v = value(scope)
                r = quick(v)
                if r is not SLOW:
                    return r
                return _ours(slow_quick(_liquid(v), *args))

            return apply_quick
        inner = func.__wrapped__ if getattr(func, "__code__", None) is _STRING_WRAPPER_CODE else None
        fast = partial(inner, **all_kwargs) if (inner is not None and all_kwargs) else inner
        slow = partial(func, **all_kwargs) if all_kwargs else func

        if fast is not None:

            def apply_string(scope: Scope) -> Any:
                v = value(scope)
                if v.__class__ is str:
                    return fast(v, *args)
                return _ours(slow(_liquid(v), *args))

            return apply_string

        def apply_any(scope: Scope) -> Any:
            return _ours(slow(_liquid(value(scope)), *args))

        return apply_any

    def primitive(self, expr: Any) -> Eval:
        if isinstance(expr, Path):
            return self.path(expr)
        if isinstance(expr, StringLiteral):
            text = Markup(expr.value) if self.autoescape else expr.value
            return lambda scope: text
        if isinstance(expr, (IntegerLiteral, FloatLiteral, TrueLiteral, FalseLiteral)):
            literal = expr.value
            return lambda scope: literal
        if isinstance(expr, (Nil, Empty, Blank)):
            constant = expr.evaluate(None)  # type: ignore[arg-type]  # these ignore the context
            return lambda scope: constant
        if isinstance(expr, RangeLiteral):
            start, stop = self.primitive(expr.start), self.primitive(expr.stop)
            return lambda scope: _range(start(scope), stop(scope))
        raise Unsupported(type(expr).__name__)

    def path(self, expr: Path) -> Eval:
        segments = expr.path
        if (
            segments
            and segments[0] == "forloop"
            and len(segments) > 1
            and all(isinstance(s, str) and s in _FORLOOP_GETTERS for s in segments[1:])
        ):
            return self.forloop_path(expr)
        return self._general_path(expr)

    def _general_path(self, expr: Path) -> Eval:
        segments = expr.path
        if not segments or not isinstance(segments[0], str):
            raise Unsupported("path root")
        if any(isinstance(s, Path) for s in segments):
            raise Unsupported("nested path")
        root, rest = segments[0], tuple(segments[1:])

        if not rest:

            def lookup_root(scope: Scope) -> Any:
                try:
                    return scope[root]
                except KeyError:
                    return Undefined(root)

            return lookup_root

        # Missing data is named up to the segment where it stops, as python-liquid does
        # ("events.cart_abandoned is undefined" when the recipient has no such event).
        prefixes = [_segments_str(segments[: n + 2]) for n in range(len(rest))]
        plain = all(isinstance(s, str) and s not in ("size", "first", "last") for s in rest)

        if len(rest) == 1 and rest[0].__class__ is int:  # `pair[0]`, `items[-1]`
            index, at_index = rest[0], prefixes[0]
            general = self._general_lookup(root, rest, prefixes, plain)

            def lookup_index(scope: Scope) -> Any:
                obj = scope.get(root, _ABSENT)
                cls = obj.__class__
                if cls is list or cls is tuple:  # get_item is a plain subscript for these
                    try:
                        return obj[index]
                    except IndexError:
                        return Undefined(at_index, "index out of range")
                return general(scope)

            return lookup_index

        if plain and len(rest) == 1:
            (key1,) = rest
            missing1 = prefixes[0]

            def lookup1(scope: Scope) -> Any:
                try:
                    return scope[root][key1]
                except KeyError:
                    return Undefined(root if root not in scope else missing1)
                except TypeError:
                    return Undefined(missing1)
                except IndexError:
                    return Undefined(missing1, "index out of range")

            return lookup1

        return self._general_lookup(root, rest, prefixes, plain)

    def _general_lookup(self, root: str, rest: tuple[Any, ...], prefixes: list[str], plain: bool) -> Eval:
        get_item = self.get_item

        def lookup(scope: Scope) -> Any:
            try:
                obj = scope[root]
            except KeyError:
                return Undefined(root)
            n = 0
            try:
                if plain:  # the common case, a chain of keys: plain subscripts
                    for n, key in enumerate(rest):  # noqa: B007 - n names the failing segment
                        obj = obj[key]
                else:
                    for n, key in enumerate(rest):  # noqa: B007
                        obj = get_item(obj, key)
                return obj
            except (KeyError, TypeError):
                return Undefined(prefixes[n])
            except IndexError:
                return Undefined(prefixes[n], "index out of range")

        return lookup

    def forloop_path(self, expr: Path) -> Eval:
        """`forloop.index`, `forloop.parentloop.last`...: read straight from the ForLoop
        (what its properties compute); anything else named `forloop` takes the general path."""
        keys = [str(s) for s in expr.path[1:]]  # checked by `path`: names of ForLoop properties
        getters = [_FORLOOP_GETTERS[key] for key in keys]
        generic = self._general_path(expr)
        if len(getters) == 1:
            return _FORLOOP_LOOKUPS[keys[0]](generic)
        if len(keys) == 2 and keys[0] == "parentloop":  # `forloop.parentloop.index` in nested loops
            return _PARENTLOOP_LOOKUPS[keys[1]](generic)

        def lookup(scope: Scope) -> Any:
            obj = scope.get("forloop")
            if obj.__class__ is not ForLoop:
                return generic(scope)
            for get in getters:
                if obj.__class__ is not ForLoop:  # a lookup in an undefined parentloop
                    raise _undefined_parent()
                obj = get(obj)
            return obj

        return lookup

    def get_item(self, obj: Any, key: Any) -> Any:
        """python-liquid's RenderContext.get_item, for plain dicts, lists and strings."""
        cls = obj.__class__
        if cls is list or cls is str:
            # obj["size"] etc. would raise TypeError for these: go straight to the fallback
            if key == "size":
                return len(obj)
            if key == "first" and cls is list:
                return obj[0]
            if key == "last" and cls is list:
                return obj[-1]
        if key == "size":
            try:
                return obj["size"]
            except (KeyError, IndexError, TypeError):
                if isinstance(obj, Sized):
                    return len(obj)
                raise
        if key == "first":
            try:
                return obj["first"]
            except (KeyError, IndexError, TypeError):
                if isinstance(obj, Mapping) and obj:
                    return next(itertools.islice(obj.items(), 1))
                if isinstance(obj, str) and not self.env.string_first_and_last:
                    raise TypeError("string object has no method 'first'") from None
                if isinstance(obj, Sequence):
                    return obj[0]
                raise
        if key == "last":
            try:
                return obj["last"]
            except (KeyError, IndexError, TypeError):
                if isinstance(obj, str) and not self.env.string_first_and_last:
                    raise TypeError("string object has no method 'last'") from None
                if isinstance(obj, Sequence):
                    return obj[-1]
                raise
        if not self.env.string_sequences and isinstance(key, int) and isinstance(obj, str):
            raise TypeError("string object is not subscriptable")
        return obj[key]

    # -- conditions (strict: a missing path raises, as python-liquid's strict mode) ---
    def condition(self, expr: Any) -> Callable[[Scope], bool]:
        if isinstance(expr, BooleanExpression):
            inner = self.logical(expr.expression)

            def test(scope: Scope) -> bool:
                v = inner(scope)
                if v is True or v is False:  # most tests: comparisons, forloop.first/last
                    return v
                return _truthy(v)

            return test
        raise Unsupported(type(expr).__name__)

    def logical(self, expr: Any) -> Eval:
        if isinstance(expr, LogicalAndExpression):
            left, right = self.logical(expr.left), self.logical(expr.right)
            return lambda s: _truthy(left(s)) and _truthy(right(s))
        if isinstance(expr, LogicalOrExpression):
            left, right = self.logical(expr.left), self.logical(expr.right)
            return lambda s: _truthy(left(s)) or _truthy(right(s))
        if isinstance(expr, LogicalNotExpression):
            operand = self.logical(expr.right)
            return lambda s: not _truthy(operand(s))
        comparison = _COMPARISONS.get(type(expr))
        if comparison is not None:
            left, right = self.logical(expr.left), self.logical(expr.right)
            token = expr.token
            # An undefined operand goes in as python-liquid's own: it fails only where the
            # comparison touches it (`false contains x` does not).
            return lambda s: comparison(token, left(s), right(s))
        return self.primitive(expr)


def _check_loop_compiles(node: ForNode, name: str) -> None:
    expr = node.expression
    if expr.cols is not None:
        raise Unsupported("for with cols")
    if isinstance(expr.offset, StringLiteral) and expr.offset.value == "continue":
        raise Unsupported("offset: continue")  # needs state across loops
    for inner in _walk(node.block.nodes):
        if isinstance(inner, (BreakNode, ContinueNode)):
            raise Unsupported("break/continue")  # python-liquid keeps partial iteration output
        if isinstance(inner, (AssignNode, CaptureNode)) and str(inner.name) in (name, "forloop"):
            raise Unsupported("assign to a loop variable")


def _loop_window(items: Any, length: int, start: int, stop_at: int | None, loop_limit: int | None) -> list[Any]:
    """The items a loop visits: python-liquid's LoopExpression._slice, quirks included
    (`stop or length`). Over the loop limit, nothing is made of them (a range of a
    billion would be)."""
    stop = None if stop_at is None else stop_at + start
    start_ = min(max(start, 0), length)
    stop_ = min(stop or length, length)
    if stop_ < 0:  # python-liquid's islice refuses it: a render error, not an empty loop
        raise ValueError("a loop's limit and offset end before its start")
    if stop_ <= start_:
        return []
    if loop_limit and stop_ - start_ > loop_limit:
        raise OverLimit("loop iterations")
    return items[start_:stop_] if items.__class__ is list else list(itertools.islice(items, start_, stop_))


class _Loop:
    """A compiled loop body, run over a sequence with the loop variable and `forloop`
    set in the scope and restored afterwards. Its iterations are checked against the
    limit as python-liquid checks them (this loop's length times its enclosing loops'),
    and its output against the output limit as it grows."""

    __slots__ = ("body", "loop_limit", "loop_name", "name", "output_limit")

    def __init__(self, name: str, loop_name: str, body: Render, loop_limit: int | None, output_limit: int | None):
        self.name, self.loop_name, self.body = name, loop_name, body
        self.loop_limit, self.output_limit = loop_limit, output_limit

    def run(self, scope: Scope, seq: list[Any], length: int) -> str:
        name, body = self.name, self.body
        parent = scope.get("forloop", _ABSENT)
        if self.loop_limit:
            iterations, enclosing = length, parent
            while enclosing.__class__ is ForLoop:
                iterations *= enclosing.length
                enclosing = enclosing.parentloop
            if iterations > self.loop_limit:
                raise OverLimit("loop iterations")
        forloop = ForLoop(self.loop_name, _NO_ITEMS, length, parent if parent.__class__ is ForLoop else _NO_PARENT)
        saved_item = scope.get(name, _ABSENT)
        scope["forloop"] = forloop
        out: list[str] = []
        append = out.append
        size, most = 0, self.output_limit
        try:
            # ForLoop.__next__ only steps `_index`: setting it directly is the same loop
            if most:
                for index, item in enumerate(seq):
                    forloop._index = index
                    scope[name] = item
                    text = body(scope)
                    append(text)
                    size += len(text)
                    if size > most:  # characters: at least as many bytes
                        raise OverLimit("output")
            else:
                for index, item in enumerate(seq):
                    forloop._index = index
                    scope[name] = item
                    append(body(scope))
        finally:  # the names as they were (inline: this runs once per loop, nested loops often)
            if saved_item is _ABSENT:
                scope.pop(name, None)
            else:
                scope[name] = saved_item
            if parent is _ABSENT:
                del scope["forloop"]
            else:
                scope["forloop"] = parent
        return "".join(out)


def _restore(scope: Scope, key: str, saved: Any) -> None:
    if saved is _ABSENT:
        scope.pop(key, None)
    else:
        scope[key] = saved


def _callable(part: Render | str) -> Render:
    return (lambda scope: part) if isinstance(part, str) else part


def _is_literal(expr: Any) -> bool:
    return isinstance(expr, (StringLiteral, IntegerLiteral, FloatLiteral, TrueLiteral, FalseLiteral, Nil, Empty, Blank))


# The code object every `@string_filter` wrapper shares: such a filter only coerces its
# input to str, so for a str its wrapped function can be called directly.
_STRING_WRAPPER_CODE = string_filter(lambda v: v).__code__


_NAMESPACE = "\x00namespace"  # in a render's scope copy: sizes of assigned values (no template can name it)


def _account(scope: Scope, name: str, value: Any, limit: int) -> None:
    """The local namespace limit (`namespace.py`): the `sys.getsizeof` of every value
    assigned so far (the latest per name; an undefined one is one byte), a running total."""
    sizes = scope.get(_NAMESPACE)
    if sizes is None:
        sizes = scope[_NAMESPACE] = {None: 0}
    # ours, or python-liquid's (a filter's undefined argument, as `default` may return it)
    size = 1 if type(value) is Undefined else size_of(value)  # type(): a strict one raises on __class__
    total = sizes[None] + size - sizes.get(name, 0)
    sizes[name] = size
    sizes[None] = total
    if total > limit:
        raise OverLimit("local namespace")


def _range(start: Any, stop: Any) -> range:
    """python-liquid's RangeLiteral: ends that are not integers count as 0; an undefined
    one fails as python-liquid's own undefined does."""
    try:
        first = to_int(_liquid(start))
    except (ValueError, TypeError):
        first = 0
    try:
        last = to_int(_liquid(stop))
    except (ValueError, TypeError):
        last = 0
    return range(0) if first > last else range(first, last + 1)


def _to_iter(obj: Any, string_sequences: bool) -> tuple[Any, int]:
    """python-liquid's LoopExpression._to_iter."""
    cls = obj.__class__
    if cls is list:  # plain classes first: isinstance against the ABCs costs more than the loop
        return obj, len(obj)
    if cls is dict:
        return iter(obj.items()), len(obj)
    if isinstance(obj, Mapping):
        return iter(obj.items()), len(obj)
    if isinstance(obj, str) and not string_sequences:
        return (iter([]), 0) if not obj else (iter([obj]), 1)
    if isinstance(obj, Sequence):
        return iter(obj), len(obj)
    return iter([]), 0


def _to_int(obj: Any) -> int:
    try:
        return to_int(obj)
    except (ValueError, TypeError) as err:
        raise LiquidTypeError(f"expected an integer, found {obj.__class__.__name__}", token=None) from err


def _truthy(value: Any) -> bool:
    """is_truthy for a defined value; a missing one raises (strict templates)."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    if isinstance(value, Undefined):
        raise value.fail()
    return is_truthy(value)


def _defined(value: Any) -> Any:
    if isinstance(value, Undefined):
        raise value.fail()
    return value


_PLAIN = (str, int, float)  # not bool: Liquid compares booleans by their own rules


def _contains_plain(token: Any, a: Any, b: Any) -> bool:
    """python-liquid's `contains`; for a list, dict or str and a plain needle that is
    Python's `in` (both sides are truthy in Liquid; python-liquid stringifies the needle
    only for a str haystack, which a str needle already is)."""
    cls = a.__class__
    if (cls is list or cls is dict) and b.__class__ in _PLAIN:
        return b in a
    if cls is str and b.__class__ is str:
        return b in a
    return _contains(token, _liquid(a), _liquid(b))


def _same_plain(a: Any, b: Any) -> bool:
    cls = a.__class__
    return cls is b.__class__ and cls in _PLAIN


# python-liquid's own comparison semantics, operand order included; two values of the
# same plain class (str, int, float) compare as Python does in every one of them.
_COMPARISONS: dict[type, Callable[[Any, Any, Any], bool]] = {
    EqExpression: lambda t, a, b: (a == b) if _same_plain(a, b) else _eq(_liquid(a), _liquid(b)),
    NeExpression: lambda t, a, b: (a != b) if _same_plain(a, b) else not _eq(_liquid(a), _liquid(b)),
    LtExpression: lambda t, a, b: (a < b) if _same_plain(a, b) else _lt(t, _liquid(a), _liquid(b)),
    GtExpression: lambda t, a, b: (a > b) if _same_plain(a, b) else _lt(t, _liquid(b), _liquid(a)),
    LeExpression: lambda t, a, b: (a <= b) if _same_plain(a, b) else _le(_liquid(a), _liquid(b)),
    GeExpression: lambda t, a, b: (a >= b) if _same_plain(a, b) else _le(_liquid(b), _liquid(a)),
    ContainsExpression: lambda t, a, b: _contains_plain(t, a, b),
}


# What ForLoop's properties compute, without the Mapping lookup and property call.
_FORLOOP_EXPRESSIONS = {
    "index": "f._index + 1",
    "index0": "f._index",
    "rindex": "f.length - f._index",
    "rindex0": "f.length - f._index - 1",
    "first": "f._index == 0",
    "last": "f._index == f.length - 1",
    "length": "f.length",
    "name": "f.name",
    "parentloop": "f.parentloop",
}
_FORLOOP_GETTERS: dict[str, Callable[[ForLoop], Any]] = {
    key: eval(f"lambda f: {source}") for key, source in _FORLOOP_EXPRESSIONS.items()
}


def _undefined_parent() -> Missing:
    return Missing("forloop.parentloop")


def _forloop_lookup(source: str, parent: bool = False) -> Callable[[Eval], Eval]:
    """`forloop.KEY` (or `forloop.parentloop.KEY`) as one function (a lookup runs once per
    item per use, and in a loop body a call is the main cost); a `forloop` that is not a
    loop goes the general way."""
    namespace: dict[str, Any] = {"ForLoop": ForLoop, "undefined_parent": _undefined_parent}
    # An outermost loop's parentloop is undefined, and python-liquid fails a lookup *in* it
    # at once (even in `assign`, where an undefined path would wait for a `default`).
    step = "        f = f.parentloop\n        if f.__class__ is not ForLoop:\n            raise undefined_parent()\n"
    exec(  # the source is one of the fixed expressions above, never template text
        "def make(generic):\n"
        "    def lookup(scope):\n"
        "        f = scope.get('forloop')\n"
        "        if f.__class__ is not ForLoop:\n"
        "            return generic(scope)\n"
        f"{step if parent else ''}"
        f"        return {source}\n"
        "    return lookup\n",
        namespace,
    )
    make: Callable[[Eval], Eval] = namespace["make"]
    return make


_FORLOOP_LOOKUPS = {key: _forloop_lookup(source) for key, source in _FORLOOP_EXPRESSIONS.items()}
_PARENTLOOP_LOOKUPS = {key: _forloop_lookup(source, parent=True) for key, source in _FORLOOP_EXPRESSIONS.items()}
_NO_ITEMS: Any = iter(())
_NO_PARENT = Undefined("parentloop")  # an outermost loop's parentloop (Undefined is never changed)
_ABSENT = object()


def _segments_str(segments: Sequence[Any]) -> str:
    out = str(segments[0])
    for s in segments[1:]:
        out += f"[{s}]" if isinstance(s, int) else f".{s}"
    return out


def _walk(nodes: Sequence[Any]) -> Any:
    for node in nodes:
        yield node
        for attr in ("consequence", "default"):
            block = getattr(node, attr, None)
            if isinstance(block, BlockNode):
                yield from _walk(block.nodes)
        for alt in getattr(node, "alternatives", ()) or ():
            yield from _walk(alt.block.nodes)
        block = getattr(node, "block", None)
        if isinstance(block, BlockNode):
            yield from _walk(block.nodes)
        for block in getattr(node, "blocks", ()) or ():
            yield from _walk(block.block.nodes if isinstance(block, MultiExpressionBlockNode) else block.nodes)
