"""A variant's `when`: a Liquid boolean expression over the template context.

A path the recipient does not have makes the condition false, not an error. Precisely,
it is three-valued (as SQL's NULL): a comparison or test touching a missing path is
*unknown*; `a and b` is false if either is false, `a or b` true if either is true, `not`
keeps unknown unknown; only a definite *true* chooses the variant. So
`events.cart.properties.value >= 200 or attributes.vip == true` still holds for a VIP
with no cart, and `attributes.tier != "gold"` does not hold for a recipient with no tier.
A comparison of incompatible types (a string against a number) is unknown too: data
from upstream must not turn into a crash. Comparisons of values that exist are
python-liquid's own (`_eq`, `_lt`, `_le`, `_contains`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from liquid.builtin.expressions.logical import (
    BooleanExpression,
    LogicalAndExpression,
    LogicalNotExpression,
    LogicalOrExpression,
    is_truthy,
)
from liquid.builtin.tags.if_tag import IfNode
from liquid.environment import Environment
from liquid.exceptions import LiquidError

from gateway.personalize.compiler import _COMPARISONS, Scope, Undefined, Unsupported, _Compiler

UNKNOWN: Any = None  # the third truth value; True and False are the other two
_PREFIX = "{% if "
_SUFFIX = " %}1{% endif %}"


class ConditionError(Exception):
    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def compile_condition(source: str, env: Environment) -> Callable[[Scope], bool]:
    """Parse and compile `when`; raise ConditionError naming what is wrong and where."""
    try:
        template = env.from_string(_PREFIX + source + _SUFFIX)
    except LiquidError as exc:
        raise ConditionError(_syntax_message(exc, source)) from None
    nodes = template.nodes
    if (
        len(nodes) != 1
        or not isinstance(nodes[0], IfNode)
        or nodes[0].alternatives
        or nodes[0].default is not None
        or str(nodes[0].consequence) != "1"
    ):
        raise ConditionError("expected one boolean expression, e.g. attributes.loyalty_member == true")
    expression = nodes[0].condition
    assert isinstance(expression, BooleanExpression)
    try:
        test = _Three(env).logical(expression.expression)
    except Unsupported as exc:
        raise ConditionError(f"unsupported in a condition: {exc}") from None
    return lambda scope: test(scope) is True


class _Three:
    def __init__(self, env: Environment):
        self.values = _Compiler(env)

    def logical(self, expr: Any) -> Callable[[Scope], bool | None]:
        if isinstance(expr, LogicalAndExpression):
            left, right = self.logical(expr.left), self.logical(expr.right)

            def both(s: Scope) -> bool | None:
                a = left(s)
                if a is False:
                    return False
                b = right(s)
                if b is False:
                    return False
                return True if (a is True and b is True) else UNKNOWN

            return both
        if isinstance(expr, LogicalOrExpression):
            left, right = self.logical(expr.left), self.logical(expr.right)

            def either(s: Scope) -> bool | None:
                a = left(s)
                if a is True:
                    return True
                b = right(s)
                if b is True:
                    return True
                return False if (a is False and b is False) else UNKNOWN

            return either
        if isinstance(expr, LogicalNotExpression):
            operand = self.logical(expr.right)

            def negate(s: Scope) -> bool | None:
                a = operand(s)
                return UNKNOWN if a is UNKNOWN else not a

            return negate
        comparison = _COMPARISONS.get(type(expr))
        if comparison is not None:
            left_value, right_value = self.values.primitive(expr.left), self.values.primitive(expr.right)
            token = expr.token

            def compare(s: Scope) -> bool | None:
                a, b = left_value(s), right_value(s)
                if isinstance(a, Undefined) or isinstance(b, Undefined):
                    return UNKNOWN
                try:
                    return bool(comparison(token, a, b))
                except (LiquidError, TypeError):
                    return UNKNOWN

            return compare
        value = self.values.primitive(expr)

        def truthy(s: Scope) -> bool | None:
            v = value(s)
            return UNKNOWN if isinstance(v, Undefined) else is_truthy(v)

        return truthy


def _syntax_message(exc: LiquidError, source: str) -> str:
    """python-liquid's message, with the column moved back past our `{% if ` wrapper.
    Errors at the end of the expression carry no position: they are at its end."""
    lines = str(exc).splitlines()
    message = lines[0]
    where = next((ln.strip() for ln in lines[1:] if ln.strip().startswith("->")), "")
    position = where.rsplit(" ", 1)[-1] if where else ""
    if ":" in position:
        line, column = position.split(":", 1)
        if line.isdigit() and column.isdigit():
            shift = len(_PREFIX) if line == "1" else 0
            return f"{message} (line:column {line}:{max(0, int(column) - shift)})"
    if "end of expression" in message:
        lines_of = source.split("\n")
        return f"{message} (line:column {len(lines_of)}:{len(lines_of[-1])})"
    return message
