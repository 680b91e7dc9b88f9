"""Compiling a job's templates and conditions once, at intake, with JSON paths for errors.

Each template is parsed by python-liquid (the reference), checked (unknown filters and
context roots are errors), then compiled to a closure (`compiler.py`) when it stays in the
compiled subset; otherwise it keeps python-liquid's renderer. Either way it renders the
same text and raises `Missing` for data the recipient lacks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from liquid import Environment, StrictDefaultUndefined
from liquid.exceptions import LiquidError, ResourceLimitError, UndefinedError
from liquid.template import BoundTemplate

from gateway.model.job import Content, Job
from gateway.personalize.blank import BLANK, guard_outputs
from gateway.personalize.compiler import Missing, OverLimit, Render, compile_template
from gateway.personalize.conditions import ConditionError, compile_condition
from gateway.personalize.filters import default
from gateway.personalize.namespace import limit_namespace

CONTENT_KINDS = ("push", "email", "speaker")
PUSH_OVERRIDES = ("apns", "fcm", "webpush")
# The template context, exactly (PRODUCT.md).
UNSUPPORTED_TAGS = ("include", "render")
CONTEXT_ROOTS = frozenset({"user_id", "attributes", "events", "properties", "campaign", "channel"})


# Render limits, python-liquid's own settings, which the compiled closures enforce too
# (and hand over to python-liquid when one trips): a template is upstream's code and may
# be hostile. Loop iterations are counted as python-liquid counts them (the product of the
# nested loops' lengths); the namespace is the `sys.getsizeof` of assigned values; the
# output is a field's UTF-8 bytes. A message's fields together may not pass MESSAGE_BYTES.
LOOP_ITERATIONS = 1_000
NAMESPACE_BYTES = 64 * 1024
FIELD_BYTES = 256 * 1024
MESSAGE_BYTES = 512 * 1024


class LimitedEnvironment(Environment):
    loop_iteration_limit = LOOP_ITERATIONS
    # python-liquid's own namespace limit stays off: it measures undefined values by raising
    # (namespace.py checks instead). These two are read by the compiler too.
    field_namespace_limit = NAMESPACE_BYTES
    field_output_limit = FIELD_BYTES
    # The output limit is the guarded output node's (blank.py) and each field's size
    # check after rendering (CompiledField.render): python-liquid's own limited buffer
    # rewrites "\r" as "\n".


def _environment(autoescape: bool) -> Environment:
    # Strict: a reference to data the recipient lacks raises instead of printing "",
    # unless the template gives a `default`. Context values are plain dicts and lists,
    # so a template cannot reach Python attributes or callables.
    env = LimitedEnvironment(undefined=StrictDefaultUndefined, autoescape=autoescape)
    env.filters["default"] = default
    for tag in UNSUPPORTED_TAGS:  # no template loader: a job's templates are all it has
        del env.tags[tag]
    guard_outputs(env, FIELD_BYTES)  # blank data is missing data; the output limit
    limit_namespace(env, NAMESPACE_BYTES)
    return env


ENV = _environment(autoescape=False)
# Values interpolated into email HTML are escaped: a profile must not inject markup.
HTML_ENV = _environment(autoescape=True)


class TemplateError(Exception):
    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class RenderFailed(Exception):
    """A template that cannot render for this recipient for a reason other than missing
    data (a filter given a value it cannot take)."""


class RenderLimit(RenderFailed):
    """A template that passed a render limit for this recipient (loop iterations, output
    size, namespace size): the recipient fails, no other variant is tried."""


@dataclass(eq=False)
class CompiledField:
    source: str
    template: BoundTemplate
    fast: Render | None  # None: rendered by python-liquid
    uses_channel: bool
    env: Environment = ENV

    def __post_init__(self) -> None:
        # What the hot path calls: the closure, or python-liquid's renderer.
        self.call: Render = _guarded(self.fast, self._reference) if self.fast is not None else self._reference

    def render(self, scope: dict[str, Any]) -> str:
        """Render, raising Missing or RenderFailed (see `render_error`)."""
        try:
            return self.call(scope)
        except Exception as exc:
            raise render_error(exc) from None

    def _reference(self, scope: dict[str, Any]) -> str:
        text = self.template.render(**scope)
        if len(text) * 4 > FIELD_BYTES and len(text.encode()) > FIELD_BYTES:
            raise RenderLimit(f"the field passes {FIELD_BYTES} bytes")
        return text


def _guarded(fast: Render, reference: Render) -> Render:
    """The closure, handing over to python-liquid (whose limits decide, and whose error
    comes first) when a limit trips or the text is over the field's size."""
    quarter = FIELD_BYTES // 4  # characters below which the UTF-8 bytes cannot pass it

    def call(scope: dict[str, Any]) -> str:
        try:
            text = fast(scope)
        except OverLimit:
            return reference(scope)
        if len(text) > quarter and len(text.encode()) > FIELD_BYTES:
            return reference(scope)
        return text

    return call


def render_error(exc: Exception) -> Missing | RenderFailed:
    """Map a render exception to Missing (data the recipient lacks) or RenderFailed."""
    if isinstance(exc, Missing):
        return exc
    if isinstance(exc, UndefinedError):
        message = str(exc).splitlines()[0]
        for hint in ("is undefined", BLANK):
            if message.endswith(f" {hint}"):
                return Missing(message.removesuffix(f" {hint}").strip("'"), hint)
        return Missing(message, message)
    # Anything else a template raises (python-liquid's errors, a filter given a value it
    # cannot take, data nested past the interpreter's recursion limit) is this variant's
    # render error: a template is upstream's code and must not end the job.
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, (ResourceLimitError, RecursionError, MemoryError)):
        return RenderLimit(first)
    return RenderFailed(first)


@dataclass(eq=False)
class CompiledContent:
    """One content kind (or override) of one variant: field name -> template; `data`
    key -> template; literals (badge) as they are."""

    fields: dict[str, CompiledField] = field(default_factory=dict)
    data: dict[str, CompiledField] | None = None
    literals: dict[str, Any] = field(default_factory=dict)
    uses_channel: bool = False  # does any template read `channel`? (set once compiled)

    def all_fields(self) -> list[CompiledField]:
        return [*self.fields.values(), *(self.data or {}).values()]


@dataclass(eq=False)
class CompiledVariant:
    name: str
    when: str | None
    condition: Any  # Callable[[scope], bool] | None
    kinds: dict[str, CompiledContent]


class TemplateCache:
    """Parsed, checked and compiled templates (and conditions) by their text and
    environment, most recently used kept: a stream of jobs sharing templates parses and
    analyses each once, not once per job."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> Any:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return found

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


CACHE = TemplateCache()
_PARTS = TemplateCache(1024)  # compiled content parts, by their values (`_compile_content`)


def cache_lookups() -> dict[tuple[str, ...], float]:
    """Look-ups of compiled templates and content parts, found and not (for /metrics)."""
    return {("hit",): CACHE.hits + _PARTS.hits, ("miss",): CACHE.misses + _PARTS.misses}


def compile_job(job: Job, max_template_chars: int) -> list[CompiledVariant]:
    """Parse and compile every template and condition; raise TemplateError naming the
    first bad one."""
    variants = []
    for i, v in enumerate(job.variants):
        condition = None
        if v.when is not None:
            _check_length(v.when, f"$.variants[{i}].when", max_template_chars)
            key = (v.when, False, "when")
            condition = CACHE.get(key)
            if condition is None:
                try:
                    condition = compile_condition(v.when, ENV)
                except ConditionError as exc:
                    raise TemplateError(f"$.variants[{i}].when", f"condition: {exc.message}") from None
                CACHE.put(key, condition)
        kinds = _compile_content(v.content, f"$.variants[{i}].content", max_template_chars)
        variants.append(CompiledVariant(v.name, v.when, condition, kinds))
    return variants


def _compile_content(content: Content, path: str, limit: int) -> dict[str, CompiledContent]:
    kinds: dict[str, CompiledContent] = {}
    for kind in CONTENT_KINDS + PUSH_OVERRIDES:
        part = getattr(content, kind)
        if part is None:
            continue
        # A stream of jobs sends the same content again and again: one look-up for the whole
        # part, by its values and the length limit they were checked against (jobs are never
        # changed once compiled, so jobs may share what they compile to).
        key = (kind, limit, msgspec.structs.astuple(part))
        try:
            compiled = _PARTS.get(key)
        except TypeError:  # unhashable values (push data): field by field, not kept
            compiled = _compile_part(kind, part, f"{path}.{kind}", limit)
        else:
            if compiled is None:
                compiled = _compile_part(kind, part, f"{path}.{kind}", limit)
                _PARTS.put(key, compiled)
        kinds[kind] = compiled
    return kinds


def _compile_part(kind: str, part: Any, path: str, limit: int) -> CompiledContent:
    compiled = CompiledContent()
    for name, value in msgspec.structs.asdict(part).items():
        where = f"{path}.{name}"
        if value is None:
            continue
        if isinstance(value, str):
            env = HTML_ENV if (kind, name) == ("email", "html") else ENV
            compiled.fields[name] = _compile(value, where, limit, env)
        elif isinstance(value, dict):
            compiled.data = {k: _compile(v, f"{where}.{k}", limit, ENV) for k, v in value.items()}
        else:
            compiled.literals[name] = value
    compiled.uses_channel = any(f.uses_channel for f in compiled.all_fields())
    return compiled


def _check_length(source: str, path: str, limit: int) -> None:
    if len(source) > limit:
        raise TemplateError(path, f"template is {len(source)} characters, the limit is {limit}")


def _compile(source: str, path: str, limit: int, env: Environment) -> CompiledField:
    _check_length(source, path, limit)
    key = (source, env.autoescape, "field")
    cached: CompiledField | None = CACHE.get(key)
    if cached is not None:
        return cached
    compiled = _parse_and_compile(source, path, env)
    CACHE.put(key, compiled)
    return compiled


def _parse_and_compile(source: str, path: str, env: Environment) -> CompiledField:
    try:
        template = env.from_string(source)
    except LiquidError as exc:
        message = _first_line(exc)
        if any(f"unexpected tag '{tag}'" in message for tag in UNSUPPORTED_TAGS):
            message += "; templates cannot include other templates"
        raise TemplateError(path, f"template syntax error: {message}") from None
    # Caught here, a typo costs the sender one 400 instead of every recipient's message.
    analysis = template.analyze()
    for name, spans in analysis.filters.items():
        if name not in env.filters:
            raise TemplateError(path, f"unknown filter '{name}' at {_position(source, spans[0].index)}")
    for name, variables in analysis.globals.items():
        if name not in CONTEXT_ROOTS:
            raise TemplateError(
                path,
                f"unknown variable '{name}' at {_position(source, variables[0].span.index)}; "
                f"templates can use {', '.join(sorted(CONTEXT_ROOTS))}",
            )
    return CompiledField(source, template, compile_template(template, env), "channel" in analysis.globals, env)


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
