"""Render cost per template field: the compiled renderer beside python-liquid's, same run.

Templates: every field of the shared example jobs plus the corpus of typical push/email
templates in `gateway.testing.templates`. Each is rendered against a recipient that has
the data it needs; python-liquid renders the very same parsed template (same environment,
same filters), so the ratio is the cost of interpretation.

Then the differential fuzzer's corpus (`tests/personalize/liquid_grammar.py`, the same
seed every run): generated templates over generated recipients, each pair that renders
text timed both ways; the ratio of means over them.

    .venv/bin/python benchmarks/render.py [--fuzz 600]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.personalize.templates import ENV, HTML_ENV, _compile  # noqa: E402
from gateway.testing.templates import CORPUS, example_templates  # noqa: E402

SCOPE: dict[str, Any] = {
    "user_id": "u-1001",
    "campaign": "cart-reminder-2026-11",
    "channel": "apns",
    "attributes": {
        "first_name": "Ana",
        "nickname": " ana ",
        "language": "fr",
        "loyalty_member": True,
        "favorite_brand": "Veja",
        "tier": "gold",
        "points": 1200,
        "tags": ["vip", "new"],
    },
    "events": {
        "cart_abandoned": {
            "count": 1,
            "last_at": datetime(2026, 11, 27, 18, 4, tzinfo=UTC),
            "properties": {"value": 240.0, "currency": "EUR", "items": ["shoes", "socks"]},
        }
    },
    "properties": {
        "order_id": "A-77120",
        "eta": "2026-12-01",
        "carrier": "UPS",
        "tracking": "1Z999AA10123456784",
        "headline": "Your weekly picks are here with new arrivals from your favourite brands",
        "message": "Your cart is waiting",
        "items": ["shoes", "socks", "bag"],
        "nested": {"size": "42", "colour": "blue"},
    },
}


def per_call(fn: Any, scope: dict[str, Any], budget: float = 0.15) -> float:
    """Mean seconds per call: the best of 7 timed rounds of as many calls as fit `budget`
    (the best round is the one least disturbed by other work on the machine)."""
    fn(scope)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget / 7:
        fn(scope)
        n += 1
    n = max(n, 10)
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            fn(scope)
        rounds.append((time.perf_counter() - start) / n)
    return min(rounds)


def run() -> dict[str, Any]:
    rows = []
    for name, source in {**example_templates(), **CORPUS}.items():
        env = HTML_ENV if ("html" in name or name == "escape_html") else ENV
        field = _compile(source, name, 10**6, env)
        template = field.template
        liquid_us = per_call(lambda s, t=template: t.render(**s), SCOPE) * 1e6
        # `call`: what personalization runs per field (render.py `_render_content`; errors
        # are mapped once per content there, not per field)
        compiled_us = per_call(field.call, SCOPE) * 1e6
        assert field.render(dict(SCOPE)) == template.render(**SCOPE), name
        rows.append(
            {
                "template": name,
                "compiled": field.fast is not None,
                "gateway_us": round(compiled_us, 3),
                "python_liquid_us": round(liquid_us, 3),
                "ratio": round(liquid_us / compiled_us, 1),
            }
        )
    compiled_rows = [r for r in rows if r["compiled"]]
    gateway_mean = statistics.fmean(r["gateway_us"] for r in rows)
    liquid_mean = statistics.fmean(r["python_liquid_us"] for r in rows)
    examples = [r for r in rows if ":" in r["template"]]
    return {
        "templates": len(rows),
        "compiled": len(compiled_rows),
        "mean_us_per_field": round(gateway_mean, 3),
        "python_liquid_mean_us_per_field": round(liquid_mean, 3),
        "ratio_of_means": round(liquid_mean / gateway_mean, 1),
        "geometric_mean_of_ratios": round(statistics.geometric_mean(r["ratio"] for r in rows), 1),
        "min_ratio": min(r["ratio"] for r in rows),
        "examples_mean_us_per_field": round(statistics.fmean(r["gateway_us"] for r in examples), 3),
        "examples_python_liquid_mean_us": round(statistics.fmean(r["python_liquid_us"] for r in examples), 3),
        "compiled_only_mean_us": round(statistics.fmean(r["gateway_us"] for r in compiled_rows), 3),
        "rows": rows,
    }


def fuzz_corpus(n: int) -> list[tuple[str, bool, dict[str, Any]]]:
    """`n` (template, HTML?, recipient) triples from the fuzzer's grammar, derandomized."""
    import warnings

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.personalize.liquid_grammar import scopes, templates

    corpus: list[tuple[str, bool, dict[str, Any]]] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(templates(), st.booleans(), scopes())
    def collect(source: str, html: bool, scope: dict[str, Any]) -> None:
        corpus.append((source, html, scope))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect()
    return corpus[:n]


def run_fuzz(n: int) -> dict[str, Any]:
    """The ratio of means over the fuzzer's pairs that render text in both renderers."""
    import copy
    import logging

    from gateway.personalize.templates import CompiledField

    logging.getLogger("gateway.personalize.compiler").setLevel(logging.ERROR)
    gateway_us, liquid_us, compiled = [], [], 0
    for source, html, scope in fuzz_corpus(n):
        env = HTML_ENV if html else ENV
        field = _compile(source, "$.t", 10**6, env)
        reference = CompiledField(source, field.template, None, False, env)
        try:
            text = reference.render(copy.deepcopy(scope))
        except Exception:
            continue  # missing data or an error: not a rendering to time
        assert field.render(copy.deepcopy(scope)) == text, source
        compiled += field.fast is not None
        gateway_us.append(per_call(field.call, scope, 0.02) * 1e6)
        liquid_us.append(per_call(reference.render, scope, 0.02) * 1e6)
    return {
        "pairs_timed": len(gateway_us),
        "compiled": compiled,
        "mean_us": round(statistics.fmean(gateway_us), 3),
        "python_liquid_mean_us": round(statistics.fmean(liquid_us), 3),
        "ratio_of_means": round(statistics.fmean(liquid_us) / statistics.fmean(gateway_us), 1),
    }


def main() -> None:
    import argparse

    from gateway.cli import tune_gc

    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=600, help="pairs from the fuzzer's corpus (0: none)")
    args = parser.parse_args()
    tune_gc()  # as `gateway serve` runs
    result = run()
    width = max(len(r["template"]) for r in result["rows"])
    print(f"{'template'.ljust(width)}  compiled  gateway us  python-liquid us  ratio")
    for r in result["rows"]:
        print(
            f"{r['template'].ljust(width)}  {'yes' if r['compiled'] else 'no ':8}  {r['gateway_us']:10.2f}  "
            f"{r['python_liquid_us']:16.2f}  {r['ratio']:5.1f}x"
        )
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.fuzz:
        print("fuzzer corpus:", json.dumps(run_fuzz(args.fuzz), indent=2))


if __name__ == "__main__":
    main()
