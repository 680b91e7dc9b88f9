"""The layer contract, checked over the import graph (every `from gateway... import` in the
tree, local imports included): what each part of the gateway may import.

The model, clock, config and the wire protocols are leaves; the store does not know
policy; the fakes do not know the demo; plugins, built-in or not, see only the public
API (`gateway.plugin`). A new edge here is a design decision: add it on purpose.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# area -> the other areas it may import (an area is `gateway.<first part>`).
ALLOWED: dict[str, set[str]] = {
    "gateway": set(),  # the package itself: its version, nothing else
    "gateway.model": set(),
    "gateway.clock": set(),
    "gateway.config": set(),
    "gateway.metrics": set(),
    "gateway.logs": {"gateway.config"},
    "gateway.console": set(),  # the console's static files
    "gateway.transport": set(),
    "gateway.channel": {"gateway.model"},
    "gateway.hookspecs": {"gateway.channel", "gateway.model"},
    "gateway.personalize": {"gateway.model"},
    "gateway.policy": {"gateway.model", "gateway.config", "gateway.channel"},
    "gateway.store": {"gateway.model", "gateway.config"},
    "gateway.dispatch": {
        "gateway.model",
        "gateway.channel",
        "gateway.config",
        "gateway.clock",
        "gateway.metrics",
        "gateway.loader",
    },
    "gateway.testing": {"gateway.transport"},
    "gateway.plugin": {
        "gateway.channel",
        "gateway.config",
        "gateway.hookspecs",
        "gateway.logs",  # Throttled: a channel's advice at most once a minute
        "gateway.model",
        "gateway.transport",
        "gateway.testing",
    },
    "gateway.loader": {"gateway.channel", "gateway.config", "gateway.hookspecs"},
    # Checking a whole config needs what the config refers to: plugins, policy, store URLs.
    "gateway.checkconfig": {
        "gateway.channel",
        "gateway.config",
        "gateway.loader",
        "gateway.policy",
        "gateway.store",
        "gateway.transport",  # a callback secret is read as its signer reads it
    },
    "gateway.pipeline": {
        "gateway.loader",
        "gateway.model",
        "gateway.channel",
        "gateway.clock",
        "gateway.dispatch",
        "gateway.metrics",
        "gateway.personalize",
        "gateway.policy",
        "gateway.store",
    },
    "gateway.runner": {"gateway.clock", "gateway.pipeline", "gateway.store"},
    "gateway.retention": {"gateway.store"},
    # Status callbacks: the outbox (store), sent over our HTTP client, signed, counted.
    "gateway.callbacks": {
        "gateway.clock",
        "gateway.config",
        "gateway.metrics",
        "gateway.model",
        "gateway.store",
        "gateway.transport",
    },
    "gateway.scheduler": {"gateway.clock", "gateway.config", "gateway.pipeline", "gateway.store"},
    "gateway.preview": {
        "gateway.channel",
        "gateway.intake",
        "gateway.model",
        "gateway.personalize",
        "gateway.pipeline",
        "gateway.policy",
    },
    "plugins": {"gateway.plugin"},
    "examples": {"gateway.plugin"},
}
# The top of the stack (app, intake, server, cli, demo) may import anything below it.
TOP = {"gateway.app", "gateway.intake", "gateway.server", "gateway.cli", "gateway.demo", "gateway.__main__"}


def _area(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "gateway" else parts[0]


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "examples":
        return "examples"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """area -> areas of the gateway it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    files = [*REPO.glob("gateway/**/*.py"), *REPO.glob("plugins/*.py"), *REPO.glob("examples/*/*/*.py")]
    for path in files:
        area = _area(_module(path))
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if node.module == "gateway" else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "gateway" and name != "gateway.__version__":
                    edges[area].add(_area(name))
        edges[area].discard(area)
    return edges


def test_every_area_imports_only_what_the_contract_allows() -> None:
    graph = import_graph()
    unknown = set(graph) - set(ALLOWED) - TOP
    assert not unknown, f"areas the contract does not know: {sorted(unknown)}"
    wrong = {
        area: sorted(targets - ALLOWED[area])
        for area, targets in graph.items()
        if area in ALLOWED and targets - ALLOWED[area]
    }
    assert not wrong, f"imports against the layer contract: {wrong}"


def test_plugins_import_only_the_public_api() -> None:
    """Stricter than the areas: the module itself, not just `gateway.plugin...`."""
    for path in [*REPO.glob("plugins/*.py"), *REPO.glob("examples/*/*/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
                assert node.module == "gateway.plugin", f"{path.relative_to(REPO)} imports {node.module}"
