"""Blank is missing: the product's rule for what an output may print.

"Hi , your order has shipped" is broken copy as surely as "Hi {{ name }}": an output of
recipient data whose value (after its filters) is nil, an empty or whitespace-only string
(tabs, newlines and U+00A0 too) or an empty list or map makes its variant ineligible with
`missing_data` ("attributes.first_name is blank"), exactly like an undefined path. An
output the author handled with `default` is exempt (`{{ x | default: "" }}` prints
nothing on purpose), as are literals (`{{ "" }}`).

Both renderers apply it: python-liquid through the output node registered here, the
compiled closures through `guard_path` and `is_blank` (`compiler.py`), so the
differential fuzzer compares them with the rule in force.
"""

from __future__ import annotations

from typing import Any, TextIO

from liquid import Environment
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.builtin.output import Output, OutputNode
from liquid.context import RenderContext
from liquid.exceptions import OutputStreamLimitError, UndefinedError
from liquid.stream import TokenStream
from liquid.stringify import to_liquid_string
from liquid.token import TOKEN_OUTPUT, Token

BLANK = "is blank"


def guard_path(expression: Any) -> str | None:
    """The data path an output prints, when the rule applies to it (no `default`)."""
    if not isinstance(expression, FilteredExpression) or not isinstance(expression.left, Path):
        return None
    if any(f.name == "default" for f in expression.filters or ()):
        return None
    return str(expression.left)


def is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value or value.isspace()
    if isinstance(value, (list, tuple, dict)):
        return not value
    return False


class GuardedOutputNode(OutputNode):
    """python-liquid's output statement, with the rule, and the output limit: once the
    text written passes `output_limit` characters (at least as many bytes), rendering
    stops. (python-liquid's own `output_stream_limit` buffer turns "\r" into "\n".)"""

    __slots__ = ("guard", "output_limit")

    def __init__(self, token: Token, expression: Any):
        super().__init__(token, expression)
        self.guard = guard_path(expression)
        self.output_limit: int | None = None

    def render_to_output(self, context: RenderContext, buffer: TextIO) -> int:
        value = self.expression.evaluate(context)
        if self.guard is not None and is_blank(value):
            raise UndefinedError(f"{self.guard} {BLANK}", token=self.token)
        written = buffer.write(to_liquid_string(value, context.autoescape))
        if self.output_limit is not None and buffer.tell() > self.output_limit:
            raise OutputStreamLimitError("output stream limit reached", token=self.token)
        return written

    async def render_to_output_async(self, context: RenderContext, buffer: TextIO) -> int:
        return self.render_to_output(context, buffer)  # the gateway never renders async


class GuardedOutput(Output):
    node_class = GuardedOutputNode
    output_limit: int | None = None

    def parse(self, stream: TokenStream) -> OutputNode:
        node = super().parse(stream)
        assert isinstance(node, GuardedOutputNode)
        node.output_limit = self.output_limit
        return node


def guard_outputs(env: Environment, output_limit: int | None) -> None:
    """Register the guarded output statement in `env`, with its output limit."""
    tag = GuardedOutput(env)
    tag.output_limit = output_limit
    env.tags[TOKEN_OUTPUT] = tag
