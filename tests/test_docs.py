"""Drift tests for what users read: every config option is documented in place in
`config/gateway.toml`, and `docs/plugins.md` covers everything a plugin may set or override
on `Channel` and everything `gateway.plugin` exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

import gateway.plugin
from gateway.channel import Channel
from gateway.config import GatewayConfig
from gateway.loader import channel_classes, plugin_manager
from gateway.policy.caps import CapRule

REPO = Path(__file__).resolve().parent.parent
_SECTION = re.compile(r"^#?\s*\[\[?([\w.\-]+)\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^#?\s*([A-Za-z_][\w]*)\s*=")


def documented_keys() -> dict[str, set[str]]:
    """Section -> keys shown in config/gateway.toml, commented out or not. A section
    `channels.apns.apps.shop` is recorded as `channels.apns.apps.*` too."""
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for line in (REPO / "config" / "gateway.toml").read_text().splitlines():
        line = line.strip()
        if found := _SECTION.match(line):
            current = found.group(1)
            sections.setdefault(current, set())
            continue
        if found := _KEY.match(line):
            sections[current].add(found.group(1))
            parent, _, _ = current.rpartition(".")
            sections.setdefault(f"{parent}.*", set()).add(found.group(1))
    return sections


def struct_sections(struct: type[msgspec.Struct], path: str) -> list[tuple[str, str]]:
    """(section, key) for every option of `struct` and the Structs it nests."""
    out: list[tuple[str, str]] = []
    info: Any = msgspec.inspect.type_info(struct)
    for field in info.fields:
        ftype = field.type
        while isinstance(ftype, msgspec.inspect.UnionType):  # `X | None`
            ftype = next(t for t in ftype.types if not isinstance(t, msgspec.inspect.NoneType))
        if isinstance(ftype, msgspec.inspect.StructType) and ftype.cls.__name__ != "SecretRef":
            out += struct_sections(ftype.cls, f"{path}.{field.encode_name}".lstrip("."))
        elif isinstance(ftype, msgspec.inspect.DictType) and isinstance(ftype.value_type, msgspec.inspect.StructType):
            out += struct_sections(ftype.value_type.cls, f"{path}.{field.encode_name}.*".lstrip("."))
        else:
            out.append((path, field.encode_name))
    return out


def config_options() -> list[tuple[str, str]]:
    options = [(s, k) for s, k in struct_sections(GatewayConfig, "") if (s, k) not in (("", "caps"), ("", "channels"))]
    options += struct_sections(CapRule, "caps")
    for name, cls in channel_classes(plugin_manager(GatewayConfig())).items():
        if cls.requires_config:
            options += struct_sections(cls.Config, f"channels.{name}")
    return options


@pytest.mark.parametrize(("section", "key"), config_options(), ids=lambda v: v)
def test_every_config_option_is_documented_in_gateway_toml(section: str, key: str) -> None:
    assert key in documented_keys().get(section, set()), f"[{section}] {key} is not in config/gateway.toml"


def overridable() -> list[str]:
    """What a plugin may set (class attributes) or override (methods) on Channel."""
    names = [n for n in vars(Channel) if not n.startswith("_")]
    return sorted(set(names) | set(Channel.__annotations__))


@pytest.mark.parametrize("name", overridable())
def test_plugins_md_covers_every_channel_attribute_and_method(name: str) -> None:
    doc = (REPO / "docs" / "plugins.md").read_text()
    assert f"`{name}" in doc, f"docs/plugins.md does not mention Channel.{name}"


@pytest.mark.parametrize("name", gateway.plugin.__all__)
def test_plugins_md_covers_the_public_api(name: str) -> None:
    doc = (REPO / "docs" / "plugins.md").read_text()
    assert f"`{name}" in doc, f"docs/plugins.md does not mention gateway.plugin.{name}"


def test_the_public_api_is_pinned() -> None:
    """Adding to `gateway.plugin` is a promise to plugin authors; removing breaks them."""
    assert sorted(gateway.plugin.__all__) == sorted(
        [
            "AddressError",
            "AddressNotAllowed",
            "ApnsFake",
            "ApnsTransport",
            "Http1Transport",
            "webhook_headers",
            "webhook_key",
            "apns_transport",
            "http1_transport",
            "EmailAddress",
            "RequestError",
            "invalid_request",
            "parse_email",
            "ApnsFault",
            "Channel",
            "ConfigError",
            "ContentKind",
            "Decision",
            "Delivery",
            "did_you_mean",
            "Device",
            "Duration",
            "EmailContent",
            "Fault",
            "FcmFake",
            "FcmFault",
            "Http1Pool",
            "Http1Response",
            "Http2Error",
            "Http2Pool",
            "Http2Response",
            "HttpError",
            "InvalidToken",
            "NoConfig",
            "PermanentFailure",
            "PushContent",
            "Recipient",
            "RenderedContent",
            "Result",
            "Secret",
            "SecretRef",
            "Sent",
            "SmtpFake",
            "SpeakerContent",
            "Throttled",
            "TransientFailure",
            "WebPushFake",
            "WebPushFault",
            "WebPushSubscription",
            "WebhookReceiver",
            "example_jobs",
            "hookimpl",
            "map_bounded",
            "new_secret",
            "parse_retry_after",
            "report_answers",
            "seconds",
        ]
    )
    for name in gateway.plugin.__all__:
        assert getattr(gateway.plugin, name) is not None
