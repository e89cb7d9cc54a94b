"""Measure the core guard on the default host: paper mode vs tuned mode vs a plain logistic probe.

    .venv/bin/python scripts/evaluate_core.py [--out reports/core_eval.json]

Reads the public sets from ../shared/data by path (never copied into the repository):
- paper mode fitted on the first 100 AdvBench + first 100 Alpaca rows, evaluated on the rest of both;
- paper, tuned and a logistic probe fitted on the bundled calibration/ sets only, evaluated on XSTest
  (safe / unsafe), the rest of AdvBench and the rest of the Alpaca sample.
States are read once (all layers; t_inst and the content mean) and every rule is scored on the same states,
with the same fitting code the library's calibration uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latent_guardrail.activations import extract_states
from latent_guardrail.centroids import TunedOptions, fit_centroids, fit_paper, fit_tuned
from latent_guardrail.datasets import read_calibration_sets, read_prompts
from latent_guardrail.hosts import load_host
from latent_guardrail.metrics import auroc
from latent_guardrail.positions import encode_batch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VIEWS = ("t_inst", "content_mean")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("reports/core_eval.json"))
    parser.add_argument("--alpaca-rest", type=int, default=900, help="Alpaca rows after the first 100 to evaluate")
    args = parser.parse_args()
    host = load_host("default")
    layers = list(range(host.num_blocks + 1))
    adv = [r.text for r in read_prompts(DATA / "advbench" / "harmful_behaviors.csv", text_column="goal")]
    alp = [r.text for r in read_prompts(DATA / "alpaca" / "alpaca_noinput_sample2000.jsonl")]
    xs = read_prompts(DATA / "xstest" / "xstest_prompts.csv")
    cal_h, cal_b = read_calibration_sets()
    sets = {
        "advbench_cal": adv[:100], "advbench_rest": adv[100:],
        "alpaca_cal": alp[:100], "alpaca_rest": alp[100:100 + args.alpaca_rest],
        "xstest_safe": [r.text for r in xs if r.label == "harmless"],
        "xstest_unsafe": [r.text for r in xs if r.label == "harmful"],
        "bundled_harmful": [r.text for r in cal_h], "bundled_harmless": [r.text for r in cal_b],
    }
    states: dict[str, torch.Tensor] = {}
    for name, prompts in sets.items():
        started = time.perf_counter()
        encodings = encode_batch(host.tokenizer, prompts)
        states[name] = extract_states(host.model, encodings, layers, pad_token_id=host.tokenizer.pad_token_id,
                                      views=VIEWS, batch_size=16, progress=name).double()
        print(f"{name}: {len(prompts)} prompts, {time.perf_counter() - started:.0f}s", flush=True)

    harmful_sets = {"advbench_rest", "xstest_unsafe"}
    eval_sets = ["advbench_rest", "alpaca_rest", "xstest_safe", "xstest_unsafe"]
    results: dict[str, dict[str, float]] = {}

    def rate(name: str, scores: np.ndarray, threshold: float) -> float:
        flagged = scores >= threshold
        return float(flagged.mean() if name in harmful_sets else (~flagged).mean())

    def record(rule: str, score_fn, threshold: float, extra: dict[str, float] | None = None) -> None:
        row = {name: rate(name, score_fn(name), threshold) for name in eval_sets}
        row["xstest_auroc"] = auroc(score_fn("xstest_unsafe"), score_fn("xstest_safe")) or float("nan")
        row["advbench_vs_alpaca_balanced"] = (row["advbench_rest"] + row["alpaca_rest"]) / 2
        row.update(extra or {})
        results[rule] = row

    inst = {k: v[:, 0] for k, v in states.items()}
    paper_ref = fit_paper(fit_centroids(inst["advbench_cal"], inst["alpaca_cal"], layers))
    record("paper (100 AdvBench + 100 Alpaca)", lambda n: paper_ref.score(inst[n]).score.numpy(), 0.0)
    cats = [r.category for r in cal_h]
    paper = fit_paper(fit_centroids(inst["bundled_harmful"], inst["bundled_harmless"], layers, cats))
    record("paper (bundled sets)", lambda n: paper.score(inst[n]).score.numpy(), 0.0)
    started = time.perf_counter()
    tuned, report = fit_tuned(states["bundled_harmful"], states["bundled_harmless"], layers, cats,
                              TunedOptions(), views=VIEWS)
    fit_s = time.perf_counter() - started
    view_idx = [VIEWS.index(v) for v in tuned.views]
    pick = lambda n: states[n][:, view_idx][:, :, list(tuned.layers)]  # noqa: E731
    record("tuned (bundled sets)", lambda n: tuned.score(pick(n)).score.numpy(), tuned.threshold,
           {"cv_auroc": report["cv_auroc"], "fit_seconds": fit_s})
    print("tuned:", {k: v for k, v in report.items() if k != "per_layer_cv_auroc"})

    # reference: a plain logistic probe on one layer (chosen by 5-fold CV on the bundled sets), t_inst only
    x_cal = torch.cat([inst["bundled_harmful"], inst["bundled_harmless"]]).numpy()
    y_cal = np.r_[np.ones(len(cal_h)), np.zeros(len(cal_b))]
    best_layer, best_cv = 0, -1.0
    for layer in range(4, len(layers), 2):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced"))
        cv = float(cross_val_score(probe, x_cal[:, layer], y_cal, cv=5, scoring="roc_auc").mean())
        if cv > best_cv:
            best_layer, best_cv = layer, cv
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000, class_weight="balanced"))
    probe.fit(x_cal[:, best_layer], y_cal)
    record(f"logistic probe (bundled sets, layer {best_layer})",
           lambda n: probe.decision_function(inst[n][:, best_layer].numpy()), 0.0, {"cv_auroc": best_cv})

    header = "| rule | AdvBench-rest detected | Alpaca-rest passed | XSTest safe passed | XSTest unsafe flagged " \
             "| XSTest AUROC |"
    print("\n" + header + "\n|---|---|---|---|---|---|")
    for rule, row in results.items():
        print(f"| {rule} | {row['advbench_rest']:.1%} | {row['alpaca_rest']:.1%} | {row['xstest_safe']:.1%} | "
              f"{row['xstest_unsafe']:.1%} | {row['xstest_auroc']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "sizes": {k: len(v) for k, v in sets.items()},
                                    "tuned_layers": list(tuned.layers), "tuned_views": list(tuned.views)}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
