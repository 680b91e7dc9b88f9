"""The canonical send jobs (`jobs/*.json`, the same as the brief's shared examples): what the
demo posts, what the contract test checks, what the benchmarks and equivalence tests
render."""

from __future__ import annotations

from importlib import resources


def example_jobs() -> list[tuple[str, bytes]]:
    """(file name, JSON body) of each canonical job, by name."""
    folder = resources.files("gateway.testing") / "jobs"
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.name.endswith(".json"))
