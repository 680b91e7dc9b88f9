"""The benchmarks are not run by `make test`, but a refactoring must not leave them
unable to start: each module imports, with everything it names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_module_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    if name == "apprise_peer":
        pytest.importorskip("apprise")  # the `bench` extra
    module = importlib.import_module(name)
    assert module.__file__ and Path(module.__file__).parent == BENCHMARKS
    sys.modules.pop(name, None)
