"""Turning a request body into a valid Job, or a 4xx that names the bad field."""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.channel import Channel
from gateway.config import LimitsConfig, unknown_hint
from gateway.model.address import AddressError, parse_email
from gateway.model.job import JOB_DECODER, Device, Job, Variant
from gateway.personalize.templates import CompiledVariant, TemplateError, compile_job

_PATH = re.compile(r" - at `(\$[^`]*)`$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class JobError(Exception):
    """A job the gateway will not accept: HTTP `status`, JSON `path`, what was expected."""

    def __init__(self, status: int, path: str, message: str):
        self.status = status
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def body(self) -> dict[str, object]:
        return {
            "error": "invalid_job" if self.status == 400 else "too_large",
            "path": self.path,
            "message": self.message,
        }


@dataclass
class AcceptedJob:
    job: Job
    variants: list[CompiledVariant]
    warnings: list[str] = field(default_factory=list)


def decode_job(body: bytes, limits: LimitsConfig) -> Job:
    if len(body) > limits.max_body_bytes:
        raise JobError(413, "$", f"body is {len(body)} bytes, the limit is {limits.max_body_bytes}")
    try:
        return JOB_DECODER.decode(body)
    except RecursionError:
        raise JobError(400, "$", "JSON nested too deeply") from None
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        path = match.group(1) if match else "$"
        message = text[: match.start()] if match else text
        if "[...]" in path:
            path = name_dict_keys(body, path)
        raise JobError(400, path, message) from None
    except msgspec.DecodeError as exc:
        raise JobError(400, "$", f"body is not valid JSON: {exc}") from None


_SEGMENT = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]+\]|\[\.\.\.\]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def name_dict_keys(body: bytes, path: str) -> str:
    """msgspec writes a dict key as `[...]`; find the key whose value fails, walking the
    raw JSON beside the Job's type hints, so the error says
    `$.recipients[0].subscriptions.push`. Falls back to msgspec's path."""
    try:
        node: Any = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # the type error came before a syntax error further on
        return path
    tp: Any = Job
    out = "$"
    for segment in _SEGMENT.findall(path.removeprefix("$")):
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if segment == "[...]":
            if not (isinstance(node, dict) and origin is dict):
                return path
            value_type = typing.get_args(tp)[1]
            bad = next((k for k, v in node.items() if not _converts(v, value_type)), None)
            if bad is None:
                return path
            out += f".{bad}" if _IDENT.fullmatch(bad) else f"[{json.dumps(bad)}]"
            node, tp = node[bad], value_type
        elif segment.startswith("["):
            if not (isinstance(node, list) and origin is list):
                return path
            out += segment
            node, tp = node[int(segment[1:-1])], typing.get_args(tp)[0]
        else:
            name = segment[1:]
            if not (
                isinstance(node, dict) and name in node and isinstance(tp, type) and issubclass(tp, msgspec.Struct)
            ):
                return path
            out += segment
            node, tp = node[name], typing.get_type_hints(tp)[name]
    return out


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [t for t in typing.get_args(tp) if t is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _converts(value: Any, target: Any) -> bool:
    try:
        msgspec.convert(value, target)
    except msgspec.ValidationError:
        return False
    return True


def accept_job(
    body: bytes, limits: LimitsConfig, channels: Mapping[str, Channel], groups: frozenset[str] | None = None
) -> AcceptedJob:
    """Decode, check every cross-field rule and what the configured channels require,
    compile the templates (once per job). `groups`: the subscription groups of the
    installed channels; a recipient's subscription to any other is a 400 (a typo would
    read as "not subscribed" and suppress every marketing message)."""
    job = decode_job(body, limits)
    check_job(job, limits)
    if groups is not None:
        check_subscriptions(job, groups)
    check_for_channels(job, channels)
    try:
        variants = compile_job(job, limits.max_template_chars)
    except TemplateError as exc:
        raise JobError(400, exc.path, exc.message) from None
    warnings = [
        f"channel '{c}' is not available on this gateway: its decisions will be suppressed: channel_unavailable"
        for c in job.channels
        if c not in channels
    ]
    return AcceptedJob(job, variants, warnings)


def check_subscriptions(job: Job, groups: frozenset[str]) -> None:
    for r, recipient in enumerate(job.recipients):
        for group in recipient.subscriptions:
            if group not in groups:
                raise JobError(
                    400,
                    f"$.recipients[{r}].subscriptions.{group}",
                    f"no channel has the subscription group {group!r}{unknown_hint(group, groups)}",
                )


def check_for_channels(job: Job, channels: Mapping[str, Channel]) -> None:
    """What the job's configured channels make of its recipients (`Channel.check_recipient`)."""
    checking = [c for name in job.channels if (c := channels.get(name)) is not None and _checks_recipients(c)]
    for r, recipient in enumerate(job.recipients):
        for channel in checking:
            for path, message in channel.check_recipient(recipient):
                raise JobError(400, f"$.recipients[{r}].{path}", message)


def _checks_recipients(channel: Channel) -> bool:
    return type(channel).check_recipient is not Channel.check_recipient


def check_job(job: Job, limits: LimitsConfig) -> None:
    if len(job.recipients) > limits.max_recipients:
        raise JobError(
            413, "$.recipients", f"{len(job.recipients)} recipients, the limit is {limits.max_recipients} per job"
        )
    if len(job.variants) > limits.max_variants:
        raise JobError(400, "$.variants", f"{len(job.variants)} variants, the limit is {limits.max_variants}")
    if len(job.channels) > limits.max_channels:
        raise JobError(400, "$.channels", f"{len(job.channels)} channels, the limit is {limits.max_channels}")
    _check_unique(job.channels, "$.channels", "channel")
    _check_unique([v.name for v in job.variants], "$.variants", "variant name")
    for i, variant in enumerate(job.variants[:-1]):
        if variant.when is None:
            raise JobError(
                400,
                f"$.variants[{i}].when",
                "only the last variant (the default) may omit `when`; this one would hide every variant after it",
            )
    for i, variant in enumerate(job.variants):
        _check_header_fields(variant, f"$.variants[{i}].content")
    last = len(job.variants) - 1
    if job.variants[last].when is not None:
        raise JobError(
            400,
            f"$.variants[{last}].when",
            "the last variant is the default and must not have `when` (add a default variant without a condition)",
        )
    if job.expires_at is not None:
        problem = instant_problem(job.expires_at)
        if problem:
            raise JobError(400, "$.expires_at", problem)
    for r, recipient in enumerate(job.recipients):
        where = f"$.recipients[{r}]"
        if recipient.email is not None:
            try:
                parse_email(recipient.email)
            except AddressError as exc:
                raise JobError(400, f"{where}.email", str(exc)) from None
        if len(recipient.devices) > limits.max_devices:
            raise JobError(
                400, f"{where}.devices", f"{len(recipient.devices)} devices, the limit is {limits.max_devices}"
            )
        for d, device in enumerate(recipient.devices):
            _check_device(device, f"{where}.devices[{d}]")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_header_fields(variant: Variant, path: str) -> None:
    """A collapse key travels in a header (apns-collapse-id, Topic): a literal one that no
    header can carry is a 400 here; a rendered one that cannot is that delivery's failure."""
    for kind in ("push", "apns", "fcm", "webpush"):
        content = getattr(variant.content, kind)
        key = content.collapse_key if content is not None else None
        if key is None or "{{" in key or "{%" in key:
            continue
        if _CONTROL.search(key) or len(key.encode()) > 64:
            raise JobError(400, f"{path}.{kind}.collapse_key", "expected at most 64 bytes and no control characters")


# Instants are checked well inside the years datetime can hold, so that adding a zone's
# offset, a day or a week to one (quiet hours, local time, calendar caps) stays valid.
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 1, 1, tzinfo=UTC)


def instant_problem(instant: datetime) -> str | None:
    """Why an instant from upstream cannot be used, or None."""
    if instant.tzinfo is None:
        return "expected an instant with a time zone offset, e.g. 2026-12-05T00:00:00Z"
    try:
        utc = instant.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        return "expected an instant between the years 0002 and 9997 (UTC)"
    return None


def _check_unique(values: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise JobError(400, f"{path}[{i}]", f"duplicate {what} '{value}'")
        seen.add(value)


# What each built-in channel's devices must carry. A plugin channel's devices need a
# `token` or a `target`; the plugin checks the rest when it sends.
DEVICE_FIELDS: dict[str, tuple[str, ...]] = {
    "apns": ("token",),
    "fcm": ("token",),
    "webpush": ("subscription",),
    "speaker": ("target", "device_id"),
}
_ALL_FIELDS = ("token", "subscription", "target", "device_id")


def _check_device(device: Device, path: str) -> None:
    required = DEVICE_FIELDS.get(device.channel)
    if required is None:
        if device.token is None and device.target is None:
            raise JobError(400, f"{path}.token", f"a '{device.channel}' device needs a `token` or a `target`")
        return
    for name in required:
        if getattr(device, name) is None:
            raise JobError(400, f"{path}.{name}", f"a '{device.channel}' device needs `{name}`")
    for name in _ALL_FIELDS:
        if name not in required and getattr(device, name) is not None:
            raise JobError(400, f"{path}.{name}", f"a '{device.channel}' device does not take `{name}`")
    if device.channel == "apns" and not (_HEX.match(device.token or "") and len(device.token or "") % 2 == 0):
        raise JobError(400, f"{path}.token", "expected an APNs device token in hexadecimal")
    if device.subscription is not None:
        try:
            url = urlsplit(device.subscription.endpoint)
            hostname, _ = url.hostname, url.port
        except ValueError:  # an unbalanced IPv6 bracket, a port out of range
            hostname = None
        if not hostname or url.scheme != "https":
            raise JobError(400, f"{path}.subscription.endpoint", "expected an https:// push service URL")
        if url.username is not None or url.password is not None:
            raise JobError(400, f"{path}.subscription.endpoint", "a push service URL carries no user name or password")
