"""Measure refusal steering on the default host and write the README's steering block and plot.

1. Fit the behavioural refusal direction (``fit_refusal_direction``) from the host's own refusals of the bundled
   harmful calibration prompts under the safety system prompt.
2. Sweep it over layers on harmless prompts (Alpaca rows ``--sweep-rows``): refusal rate per layer (phrase judge),
   and the same for the guard's stored direction (the contrastive fallback the default guard carries).
3. At the best layer, the refusal rate of 50 *other* harmless prompts (``--check-rows``) with and without steering.

Writes ``docs/steering/sweep.png``, ``docs/steering/results.json`` and the block between
``<!-- steering-results -->`` markers in README.md. Slow on 2 CPU cores (tens of minutes); numbers as measured.

Run: python scripts/steering_results.py [--coeff 4] [--layers 6,9,12,15,18,21,24]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_calibration_sets, read_prompts
from latent_guardrail.steering import SweepResult, fit_refusal_direction, sweep

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_noinput_sample2000.jsonl"
MARKER = "<!-- steering-results -->"


def _rows(spec: str) -> slice:
    first, last = (int(part) for part in spec.split(":"))
    return slice(first, last)


def _plot(results: dict[str, SweepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.4, 3.6))
    try:
        for name, result in results.items():
            layers = sorted(result.rates)
            axis.plot(layers, [100 * result.rates[layer] for layer in layers], marker="o",
                      label=f"{name} (c={result.coeff:g})")
        baseline = next(iter(results.values())).baseline
        axis.axhline(100 * baseline, color="grey", linestyle="--", label="no steering")
        axis.set_xlabel("steered residual layer")
        axis.set_ylabel("refusal rate of harmless prompts (%)")
        axis.set_title("refusal steering on SmolLM2-135M-Instruct (positions=all)")
        axis.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coeff", type=float, default=4.0)
    parser.add_argument("--layers", default="9,12,15,18,21")
    parser.add_argument("--stored-layers", default="9,15,21", help="layers swept with the guard's stored direction")
    parser.add_argument("--sweep-rows", default="1000:1030", help="Alpaca rows swept (first:last)")
    parser.add_argument("--check-rows", default="1050:1100", help="Alpaca rows of the with/without check")
    parser.add_argument("--fit-prompts", type=int, default=96, help="bundled harmful prompts for the direction")
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "steering")
    args = parser.parse_args()
    layers = [int(item) for item in args.layers.split(",")]
    started = time.perf_counter()

    guard = LatentGuard.load("default", progress=True)
    harmful = [record.text for record in read_calibration_sets()[0]]
    fit = random.Random(0).sample(harmful, min(args.fit_prompts, len(harmful)))
    direction = fit_refusal_direction(guard, fit, progress=True)
    print("behavioural direction:", direction.source, flush=True)
    alpaca = [record.text for record in read_prompts(ALPACA)]
    swept, checked = alpaca[_rows(args.sweep_rows)], alpaca[_rows(args.check_rows)]

    results = {
        "behavioural direction": sweep(guard, swept, direction=direction, layers=layers, coeff=args.coeff,
                                       max_new_tokens=args.max_new_tokens, progress=True),
        f"stored direction ({guard.fitted.refusal_source})": sweep(
            guard, swept, layers=[int(item) for item in args.stored_layers.split(",")], coeff=1.0,
            max_new_tokens=args.max_new_tokens, progress=True),
    }
    best = results["behavioural direction"].best_layer
    check = sweep(guard, checked, direction=direction, layers=[best], coeff=args.coeff,
                  max_new_tokens=args.max_new_tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(results, args.out / "sweep.png")
    summary = {name: result.model_dump() for name, result in results.items()}
    summary["check"] = check.model_dump()
    summary["direction_source"] = direction.source
    (args.out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")

    rows = "\n".join(
        f"| {name} | {result.coeff:g} | "
        + " | ".join(f"{100 * result.rates[layer]:.0f}%" if layer in result.rates else "—" for layer in layers) + " |"
        for name, result in results.items())
    block = (
        f"{MARKER}\nMeasured on the default host by `scripts/steering_results.py` "
        f"({time.perf_counter() - started:.0f} s; phrase judge, greedy {args.max_new_tokens} tokens, positions=all). "
        f"Refusal rate of {len(swept)} harmless "
        f"Alpaca prompts per steered layer (no steering: {100 * results['behavioural direction'].baseline:.0f}%):\n\n"
        f"| direction | c | " + " | ".join(f"L{layer}" for layer in layers) + " |\n"
        "|---|---|" + "---|" * len(layers) + f"\n{rows}\n\n"
        f"At the best layer ({best}), on {len(checked)} *other* harmless prompts: **{100 * check.baseline:.0f}% "
        f"refused without steering, {100 * check.rates[best]:.0f}% with** the behavioural direction "
        f"({direction.source}). The guard's stored contrastive direction (a prefilled refusal vs compliance opening) "
        "moves mostly token identity and does not make this host refuse; fit the behavioural one with "
        "`fit_refusal_direction` and store it with `guard.with_refusal_direction(...)`.\n\n"
        "![refusal rate per steered layer](docs/steering/sweep.png)\n"
        f"{MARKER}")
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    first = text.index(MARKER)
    last = text.find(MARKER, first + len(MARKER))
    end = first + len(MARKER) if last < 0 else last + len(MARKER)
    readme.write_text(text[:first] + block + text[end:], encoding="utf-8")
    print(block)


if __name__ == "__main__":
    main()
