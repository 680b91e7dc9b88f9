"""Filters where the gateway's Liquid differs from python-liquid's."""

from __future__ import annotations

import decimal
from typing import Any

from liquid.builtin.filters.misc import is_empty
from liquid.filter import liquid_filter


@liquid_filter
def default(obj: Any, default_: object = "", *, allow_false: bool = False) -> Any:
    """python-liquid's `default`, and also for whitespace-only strings: "Hi   ," is
    broken copy as surely as "Hi ,"."""
    if getattr(obj, "force_liquid_default", False):
        return default_
    if not isinstance(obj, bool) and isinstance(obj, (int, float, decimal.Decimal)):
        return obj
    if allow_false is True and obj is False:
        return obj
    if obj in (None, False) or is_empty(obj) or (isinstance(obj, str) and obj.isspace()):
        return default_
    return obj
