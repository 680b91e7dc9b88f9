"""Compiling a job's templates once, at intake, with their JSON paths for error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from liquid import Environment, StrictDefaultUndefined
from liquid.exceptions import LiquidError

from gateway.intake.model import Content, Job

# Strict: a reference to data the recipient lacks raises instead of printing "" ("Hi ,"),
# unless the template gives a `default`. Context values are plain dicts and lists, so a
# template cannot reach Python attributes or callables.
ENV = Environment(undefined=StrictDefaultUndefined)

CONTENT_KINDS = ("push", "email", "speaker")
PUSH_OVERRIDES = ("apns", "fcm", "webpush")


class TemplateError(Exception):
    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass
class CompiledContent:
    """One content kind (or override) of one variant: field name -> compiled template,
    or, for `push.data`, key -> compiled template under `data`."""

    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    literals: dict[str, Any] = field(default_factory=dict)  # badge: not a template


@dataclass
class CompiledVariant:
    name: str
    when: str | None
    kinds: dict[str, CompiledContent]


def compile_job(job: Job, max_template_chars: int) -> list[CompiledVariant]:
    """Parse every template of every variant; raise TemplateError naming the first bad one."""
    return [
        CompiledVariant(v.name, v.when, _compile_content(v.content, f"$.variants[{i}].content", max_template_chars))
        for i, v in enumerate(job.variants)
    ]


def _compile_content(content: Content, path: str, limit: int) -> dict[str, CompiledContent]:
    kinds: dict[str, CompiledContent] = {}
    for kind in CONTENT_KINDS + PUSH_OVERRIDES:
        part = getattr(content, kind)
        if part is None:
            continue
        compiled = CompiledContent()
        for name, value in msgspec.structs.asdict(part).items():
            where = f"{path}.{kind}.{name}"
            if value is None:
                continue
            if isinstance(value, str):
                compiled.fields[name] = _parse(value, where, limit)
            elif isinstance(value, dict):
                compiled.data = {k: _parse(v, f"{where}.{k}", limit) for k, v in value.items()}
            else:
                compiled.literals[name] = value
        kinds[kind] = compiled
    return kinds


# The template context, exactly (PRODUCT.md).
CONTEXT_ROOTS = frozenset({"user_id", "attributes", "events", "properties", "campaign", "channel"})


def _parse(source: str, path: str, limit: int) -> Any:
    if len(source) > limit:
        raise TemplateError(path, f"template is {len(source)} characters, the limit is {limit}")
    try:
        template = ENV.from_string(source)
    except LiquidError as exc:
        raise TemplateError(path, f"template syntax error: {_first_line(exc)}") from None
    # Caught here, a typo costs the sender one 400 instead of every recipient's message.
    analysis = template.analyze()
    for name, spans in analysis.filters.items():
        if name not in ENV.filters:
            raise TemplateError(path, f"unknown filter '{name}' at {_position(source, spans[0].index)}")
    for name, variables in analysis.globals.items():
        if name not in CONTEXT_ROOTS:
            raise TemplateError(path, f"unknown variable '{name}' at {_position(source, variables[0].span.index)}; "
                                f"templates can use {', '.join(sorted(CONTEXT_ROOTS))}")
    return template


def _position(source: str, index: int) -> str:
    line = source.count("\n", 0, index) + 1
    column = index - (source.rfind("\n", 0, index) + 1)
    return f"line:column {line}:{column}"


def _first_line(exc: Exception) -> str:
    # python-liquid's message is multi-line with a source excerpt; line 1 plus the position.
    lines = str(exc).splitlines()
    where = next((ln.strip() for ln in lines[1:] if ln.strip().startswith("->")), "")
    position = where.rsplit(" ", 1)[-1] if where else ""
    return f"{lines[0]} (line:column {position})" if position else lines[0]
