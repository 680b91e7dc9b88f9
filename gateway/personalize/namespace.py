"""The local namespace limit (assigned and captured values), for python-liquid's renderer.

python-liquid's own `local_namespace_limit` measures with `sys.getsizeof`, which an
undefined value answers by raising: with the limit on, `{% assign n = attributes.nickname %}`
would be missing data at once, where without it the undefined value flows on to a
`default` as Liquid means it to. So the environment keeps python-liquid's setting off, and
these nodes check after each `assign` and `capture`, counting an undefined value as one
byte; the compiled closures count the same way (`compiler._account`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from io import StringIO
from typing import Any, TextIO

from liquid import Environment
from liquid.builtin.tags.assign_tag import AssignNode, AssignTag
from liquid.builtin.tags.capture_tag import CaptureNode, CaptureTag
from liquid.context import RenderContext
from liquid.exceptions import LocalNamespaceLimitError
from liquid.undefined import Undefined

TAG_ASSIGN, TAG_CAPTURE = "assign", "capture"


def size_of(value: Any) -> int:
    """`sys.getsizeof`, with an undefined value as one byte (it raises on being measured)."""
    if issubclass(type(value), Undefined):  # not isinstance: a strict one raises on that too
        return 1
    return sys.getsizeof(value, 1)


def namespace_size(values: Mapping[str, Any]) -> int:
    return sum(size_of(v) for v in values.values())


class _Limited:
    limit: int | None = None

    def check(self, context: RenderContext) -> None:
        if self.limit is not None and namespace_size(context.locals) > self.limit:
            raise LocalNamespaceLimitError("local namespace limit reached", token=None)


class LimitedAssignNode(AssignNode, _Limited):
    __slots__ = ()

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        written = super().render_to_output(context, buffer)
        self.check(context)
        return written


class LimitedCaptureNode(CaptureNode, _Limited):
    __slots__ = ()

    def _assign(self, context: RenderContext, buf: StringIO) -> None:
        super()._assign(context, buf)
        self.check(context)


def limit_namespace(env: Environment, limit: int) -> None:
    """Register `assign` and `capture` checking the local namespace against `limit`."""
    for name, base, node in ((TAG_ASSIGN, AssignTag, LimitedAssignNode), (TAG_CAPTURE, CaptureTag, LimitedCaptureNode)):
        limited = type(
            f"Limited{base.__name__}",
            (base,),
            {"node_class": type(node.__name__, (node,), {"__slots__": (), "limit": limit})},
        )
        env.tags[name] = limited(env)
