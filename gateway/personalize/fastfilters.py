"""Exact fast paths for python-liquid filters whose arguments are literals.

The compiled renderer calls python-liquid's own filter functions so that its output is
python-liquid's by construction. For a few filters that costs more than the filter's
work: `times` builds two Decimals and passes two wrappers per call, `round` passes a
wrapper, a number check and an undefined check before calling `round`. With literal
arguments, part of that is known when the job is compiled. Each factory here returns a
function doing the same computation as the python-liquid function it replaces, for the
input classes it handles (exact classes: `bool` is not `int` here), and `SLOW` for
anything else, which the compiler then hands to python-liquid's function.

A fast path is used only when the environment's filter *is* the python-liquid function
it mirrors (keyed by identity), so an overridden filter is never bypassed. The
equivalence property tests compare the results on generated data.
"""

from __future__ import annotations

import datetime as dt
import decimal
import html
import operator
from collections.abc import Callable
from typing import Any

from liquid import Markup
from liquid.builtin.filters import math as liquid_math
from liquid.builtin.filters import misc as liquid_misc
from liquid.builtin.filters import string as liquid_string
from liquid.filter import num_arg
from markupsafe import escape as markup_escape

SLOW = object()  # "not handled here: call python-liquid's filter"

Fast = Callable[[Any], Any]


def _arithmetic(op: Callable[[Any, Any], Any]) -> Callable[..., Fast | None]:
    """`plus`, `minus`, `times`: int op int stays int, anything else goes through Decimal
    of the numbers' `str`, as python-liquid does; the argument's Decimal is built once."""

    def factory(args: list[Any], kwargs: dict[str, Any], env: Any) -> Fast | None:
        if len(args) != 1 or kwargs:
            return None
        other = num_arg(args[0], default=0)
        if other.__class__ not in (int, float):  # a bool, a Decimal: python-liquid's way
            return None
        other_is_int = isinstance(other, int)
        other_dec = decimal.Decimal(str(other))
        Dec = decimal.Decimal

        def fast(v: Any) -> Any:
            cls = v.__class__
            if cls is int:
                return op(v, other) if other_is_int else float(op(Dec(str(v)), other_dec))
            if cls is float:
                return float(op(Dec(str(v)), other_dec))
            return SLOW

        return fast

    return factory


def _round(args: list[Any], kwargs: dict[str, Any], env: Any) -> Fast | None:
    if kwargs or len(args) > 1:
        return None
    ndigits: int | None = None
    if args:
        try:
            number = num_arg(args[0])
        except Exception:
            return None  # python-liquid's own error/fallback handling applies
        if isinstance(number, float):
            number = int(number)
        if not isinstance(number, int) or isinstance(number, bool):
            return None
        ndigits = number

    def fast(v: Any) -> Any:
        cls = v.__class__
        if cls is not int and cls is not float:
            return SLOW
        if ndigits is None or ndigits == 0:
            return round(v)
        if ndigits < 0:
            return 0
        return round(v, ndigits)

    return fast


def _date(args: list[Any], kwargs: dict[str, Any], env: Any) -> Fast | None:
    if len(args) != 1 or kwargs or not isinstance(args[0], str):
        return None
    fmt = args[0]
    as_markup = env.autoescape and isinstance(fmt, Markup)
    to_date = liquid_misc._to_date  # python-liquid's parser, with its own small cache

    def fast(v: Any) -> Any:
        date_: dt.datetime | None
        if v.__class__ is dt.datetime:
            date_ = v
        elif v.__class__ is str and v not in ("now", "today"):
            date_ = to_date(v)
            if date_ is None:
                return SLOW
        else:
            return SLOW
        try:
            rv = date_.strftime(fmt)
        except ValueError:
            return SLOW
        return Markup(rv) if as_markup else rv

    return fast


def _escape(args: list[Any], kwargs: dict[str, Any], env: Any) -> Fast | None:
    if args or kwargs:
        return None
    escape = markup_escape if env.autoescape else html.escape

    def fast(v: Any) -> Any:
        return escape(v) if v.__class__ is str else SLOW

    return fast


FACTORIES: dict[Any, Callable[[list[Any], dict[str, Any], Any], Fast | None]] = {
    liquid_math.plus: _arithmetic(operator.add),
    liquid_math.minus: _arithmetic(operator.sub),
    liquid_math.times: _arithmetic(operator.mul),
    liquid_math.round_: _round,
    liquid_misc.date: _date,
    liquid_string.escape: _escape,
}


def fast_filter(func: Any, args: list[Any], kwargs: dict[str, Any], env: Any) -> Fast | None:
    """A fast path for `func` with these literal arguments, or None (also when building
    one meets an argument it did not foresee: python-liquid's filter then decides)."""
    factory = FACTORIES.get(func)
    if factory is None:
        return None
    try:
        return factory(args, kwargs, env)
    except Exception:
        return None
