"""The plugin contract: every hook the gateway calls, typed and documented here.

Hooks are called at start-up (registration) or once per *batch* (observers), never once
per message: a 10,000-recipient job in batches of 500 costs 20 observer calls, not 10,000.
`docs/plugins.md` has one section per hook; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gateway.channel import Channel
    from gateway.model.decision import Decision
    from gateway.model.delivery import Delivery, Result

hookspec = pluggy.HookspecMarker("gateway")
hookimpl = pluggy.HookimplMarker("gateway")


@hookspec
def register_channels() -> Sequence[type[Channel]]:  # type: ignore[empty-body]
    """Return the channel classes this plugin provides.

    Called once at start-up. Each class names its channel (`Channel.name`), its content
    kind and subscription group, and its `Config` Struct, which the gateway decodes from
    the `[channels.<name>]` table of the config file. When two plugins register the same
    name, the first registered wins; built-in plugins are registered last (`trylast`), so
    a third-party plugin can replace a built-in channel.
    """


@hookspec
def delivery_results(job_id: str, channel: str, deliveries: Sequence[Delivery], results: Sequence[Result]) -> None:
    """Observe one batch of delivery attempts on one channel.

    `results[i]` is the outcome of `deliveries[i]` for this attempt (transient failures
    that will be retried appear here too, once per attempt). Use it for audit logs,
    analytics or custom metrics. It runs on the event loop: keep it fast, hand slow work to
    a queue of your own.
    """


@hookspec
def tokens_invalidated(channel: str, deliveries: Sequence[Delivery]) -> None:
    """Dead device tokens or subscriptions found in one batch on one channel.

    Each delivery's `to` is the device the provider rejected as gone (APNs `Unregistered`,
    FCM `UNREGISTERED`, web push 404/410, a speaker target's 410). Upstream should delete
    them; the job's decisions also list them.
    """


@hookspec
def decisions_recorded(job_id: str, decisions: Sequence[Decision]) -> None:
    """Decisions of one batch, called after they are durably stored.

    This is where a callback to upstream ("what happened to each recipient") plugs in.
    """
