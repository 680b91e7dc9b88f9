"""Rendering one recipient's content for one channel.

Foundation stand-in: the default (last) variant is rendered with python-liquid. Variant
choice by condition and the compiled fast path replace `choose` in the personalization
issue; the interface (`Personalizer.render`) stays.
"""

from __future__ import annotations

from typing import Any

from liquid.exceptions import LiquidError, UndefinedError

from gateway.channel import RenderedContent
from gateway.intake.model import EmailContent, Job, PushContent, Recipient, SpeakerContent
from gateway.personalize.templates import PUSH_OVERRIDES, CompiledContent, CompiledVariant

_KIND_TYPES = {"push": PushContent, "email": EmailContent, "speaker": SpeakerContent}


class MissingData(Exception):
    """The recipient lacks data a template needs; `path` names the template field."""

    def __init__(self, variant: str, path: str, detail: str):
        self.variant = variant
        self.path = path
        self.detail = detail
        super().__init__(f"{variant}: {path}: {detail}")


def context(job: Job, recipient: Recipient, channel: str) -> dict[str, Any]:
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


class Personalizer:
    def __init__(self, job: Job, variants: list[CompiledVariant]):
        self.job = job
        self.variants = variants

    def choose(self, recipient: Recipient) -> CompiledVariant:
        return self.variants[-1]

    def render(
        self, recipient: Recipient, channel: str, kind: str, ctx: dict[str, Any] | None = None
    ) -> tuple[str, RenderedContent | None]:
        """(variant name, rendered content), content None when the variant has no content
        of this kind. Raises MissingData."""
        variant = self.choose(recipient)
        compiled = variant.kinds.get(kind)
        if compiled is None:
            return variant.name, None
        if ctx is None:
            ctx = context(self.job, recipient, channel)
        else:
            ctx["channel"] = channel
        values = _render(compiled, ctx, variant.name, kind)
        if kind == "push" and channel in PUSH_OVERRIDES and channel in variant.kinds:
            values.update(_render(variant.kinds[channel], ctx, variant.name, channel))
        return variant.name, _KIND_TYPES[kind](**values)


def _render(compiled: CompiledContent, ctx: dict[str, Any], variant: str, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = dict(compiled.literals)
    try:
        for name, template in compiled.fields.items():
            out[name] = template.render(**ctx)
        if compiled.data is not None:
            out["data"] = {k: t.render(**ctx) for k, t in compiled.data.items()}
    except UndefinedError as exc:
        raise MissingData(variant, f"content.{kind}", str(exc).splitlines()[0]) from None
    except LiquidError as exc:
        raise MissingData(variant, f"content.{kind}", f"render error: {str(exc).splitlines()[0]}") from None
    return out
