"""Choosing a recipient's variant and rendering it for each channel.

Variants are tried in order. One is chosen when its `when` holds AND every template the
recipient will receive renders with the recipient's data (the content kinds of the
channels that passed policy). Missing data makes a variant ineligible, recorded with the
path; if even the default cannot render, nothing is sent and the decision is
`suppressed: missing_data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.model import decision as d
from gateway.model.delivery import RenderedContent
from gateway.model.job import EmailContent, Job, PushContent, Recipient, SpeakerContent
from gateway.personalize.compiler import Missing
from gateway.personalize.templates import (
    MESSAGE_BYTES,
    PUSH_OVERRIDES,
    CompiledContent,
    CompiledVariant,
    RenderFailed,
    RenderLimit,
    render_error,
)

_KIND_TYPES = {"push": PushContent, "email": EmailContent, "speaker": SpeakerContent}
CONDITION_FALSE = "condition_false"


@dataclass
class Skipped:
    """Why a variant was not chosen."""

    variant: str
    reason: str  # condition_false | missing_data | render_error | render_limit
    path: str | None = None  # the template field, for missing_data / render_error
    detail: str | None = None  # e.g. "attributes.first_name is undefined"

    def describe(self) -> str:
        if self.reason == CONDITION_FALSE:
            return f"{self.variant}: condition false"
        return f"{self.variant}: {self.reason} at {self.path} ({self.detail})"


@dataclass
class Choice:
    variant: str | None  # None: not even the default renders
    skipped: list[Skipped] = field(default_factory=list)
    contents: dict[str, RenderedContent | None] = field(default_factory=dict)  # channel -> content

    @property
    def failure(self) -> Skipped | None:
        """Why nothing can be sent: the last variant's reason (a render limit ends the
        choice at once: the recipient fails rather than getting another variant)."""
        return self.skipped[-1] if self.variant is None and self.skipped else None


def context(job: Job, recipient: Recipient, channel: str | None = None) -> dict[str, Any]:
    """The template context, exactly: user_id, attributes, events, properties, campaign,
    channel."""
    return {
        "user_id": recipient.user_id,
        "attributes": recipient.attributes,
        "events": {
            name: {"count": e.count, "last_at": e.last_at, "properties": e.properties}
            for name, e in recipient.events.items()
        },
        "properties": recipient.properties,
        "campaign": job.campaign,
        "channel": channel,
    }


# Content kinds of the channels the product names, so a job's variant choice does not
# depend on which of these plugins a deployment has installed.
BUILTIN_KINDS = {"apns": "push", "fcm": "push", "webpush": "push", "email": "email", "speaker": "speaker"}


def channel_kinds(job: Job, kinds: Mapping[str, str]) -> list[tuple[str, str]]:
    """(channel, content kind) for the job's channels whose kind is known: `kinds` from
    the loaded channel classes, then the built-in names."""
    out = []
    for name in job.channels:
        kind = kinds.get(name) or BUILTIN_KINDS.get(name)
        if kind is not None:
            out.append((name, kind))
    return out


@dataclass
class _Step:
    """How one channel's content is rendered for one variant, worked out once per job."""

    channel: str
    kind: str
    content: CompiledContent | None
    override: CompiledContent | None  # content.apns / .fcm / .webpush
    per_channel: bool  # False: the rendering of its kind is shared with other channels


class Personalizer:
    def __init__(self, job: Job, variants: list[CompiledVariant], kinds: Mapping[str, str] | None = None):
        self.job = job
        self.variants = variants
        self.channels = channel_kinds(job, kinds or {})
        self.steps = {id(v): self._steps(v) for v in variants}

    def _steps(self, variant: CompiledVariant) -> list[_Step]:
        steps = []
        for channel, kind in self.channels:
            content = variant.kinds.get(kind)
            override = variant.kinds.get(channel) if kind == "push" and channel in PUSH_OVERRIDES else None
            per_channel = override is not None or (content is not None and content.uses_channel)
            steps.append(_Step(channel, kind, content, override, per_channel))
        return steps

    def choose(self, recipient: Recipient) -> Choice:
        """The first variant whose condition holds and whose templates for every channel
        of the job render; `contents` maps each of those channels to its rendering."""
        scope = context(self.job, recipient)
        choice = Choice(None)
        for variant in self.variants:
            if variant.condition is not None:
                scope["channel"] = None
                if not variant.condition(scope):
                    choice.skipped.append(Skipped(variant.name, CONDITION_FALSE))
                    continue
            try:
                choice.contents = self._render(variant, scope)
            except _Ineligible as exc:
                choice.skipped.append(exc.skipped)
                if exc.skipped.reason == d.RENDER_LIMIT:
                    return choice
                continue
            choice.variant = variant.name
            return choice
        return choice

    def _render(self, variant: CompiledVariant, scope: dict[str, Any]) -> dict[str, RenderedContent | None]:
        contents: dict[str, RenderedContent | None] = {}
        shared: dict[str, RenderedContent] = {}  # kind -> content, for templates blind to `channel`
        budget = [MESSAGE_BYTES]  # what the message's fields may still take
        for step in self.steps[id(variant)]:
            if step.content is None:
                contents[step.channel] = None
                continue
            if not step.per_channel and step.kind in shared:
                contents[step.channel] = shared[step.kind]
                continue
            scope["channel"] = step.channel
            values = _render_content(step.content, scope, variant.name, step.kind, budget)
            if step.override is not None:
                values.update(_render_content(step.override, scope, variant.name, step.channel, budget))
            content = _KIND_TYPES[step.kind](**values)
            if not step.per_channel:
                shared[step.kind] = content
            contents[step.channel] = content
        return contents


class _Ineligible(Exception):
    def __init__(self, skipped: Skipped):
        self.skipped = skipped


def _render_content(
    compiled: CompiledContent, scope: dict[str, Any], variant: str, kind: str, budget: list[int]
) -> dict[str, Any]:
    """The rendered fields; `budget`: the UTF-8 bytes the message may still take."""
    out: dict[str, Any] = dict(compiled.literals)
    name = ""
    try:
        for name, template in compiled.fields.items():
            out[name] = text = template.call(scope)
            _take(budget, text)
        if compiled.data is not None:
            data = {}
            for key, template in compiled.data.items():
                name = f"data.{key}"
                data[key] = text = template.call(scope)
                _take(budget, text)
            out["data"] = data
    except Exception as exc:
        error = render_error(exc)
        if not isinstance(error, (Missing, RenderFailed)):
            raise
        if isinstance(error, Missing):
            reason = d.MISSING_DATA
        else:
            reason = d.RENDER_LIMIT if isinstance(error, RenderLimit) else d.RENDER_ERROR
        skipped = Skipped(variant, reason, f"content.{kind}.{name}", str(error))
        # Missing data is an everyday outcome, not a fault. Raising from inside this
        # clause would keep `exc` bound in this frame while its traceback holds the
        # frame: a reference cycle that keeps the frames, and through them the caller's
        # whole batch, alive until a cyclic GC pass (measured: ~20% of the hot path).
        _drop_tracebacks(exc)
        del exc, error
    else:
        return out
    raise _Ineligible(skipped)


def _take(budget: list[int], text: str) -> None:
    budget[0] -= len(text) if text.isascii() else len(text.encode())
    if budget[0] < 0:
        raise RenderLimit(f"the message passes {MESSAGE_BYTES} bytes")


def _drop_tracebacks(exc: BaseException | None) -> None:
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
