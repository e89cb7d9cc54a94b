"""Generate the README results section from the evaluation and benchmark outputs (never typed by hand).

    .venv/bin/python scripts/make_results.py            # evaluate (cached by content hash), then write README
    .venv/bin/python scripts/make_results.py --readme-only   # rewrite the README from docs/results/*.json

Evaluation: the default host (SmolLM2-135M-Instruct) with the default guard (tuned mode) and a paper-mode guard,
both calibrated on the bundled sets only, plus the three same-host baselines, on the public sets read by path from
``../shared/data`` (never copied into the repository): AdvBench rows 100–519, a fixed sample of Alpaca rows
100–1999 and all of XSTest. The report, ``results.json`` and the plots go to ``docs/results/``; the benchmark
figures come from ``docs/results/bench.json`` (written by ``make bench``). The README section between
``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "results"
README = ROOT / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# Sizes chosen for a 2-core CPU shared with four other jobs (one forward pass of 16 short prompts took ~30 s
# there): every prompt is read by the guards, answered by the host (keyword judge), asked a self-check question and
# scored for perplexity. Fixed samples (seed 0); XSTest is sampled per label.
ADVBENCH_SKIP, ADVBENCH_SAMPLE = 100, 40    # rows 0–99 are what a paper-style calibration would use
ALPACA_SKIP, ALPACA_SAMPLE = 100, 40
XSTEST_SAMPLE = 60                          # per label (safe / unsafe)
MAX_NEW_TOKENS = 16
FULL_ALPACA = 400                           # the guards alone (states only) run on larger sets

# The paper's published table (Zhao et al., NeurIPS 2025, arXiv 2507.11878): accuracy %, Latent Guard / Llama
# Guard 3 8B, on 7–8B hosts. Quoted as the reference; these numbers are not measured here.
PAPER_TABLE = """| Host | GCG suffix | Persuasion | Template | Refused harmless (XSTest) | Accepted harmful |
|---|---|---|---|---|---|
| Llama2-7B-chat | 100 / 100 | 41.6 / 0.0 | 100 / 76.0 | 100 / 84.4 | 93.9 / 45.5 |
| Llama3-8B-Instruct | 91.0 / 99.2 | 65.0 / 6.8 | 100 / 50.0 | 78.5 / 50.0 | 59.3 / 37.3 |
| Qwen2-7B-Instruct | 100 / 97.8 | 75.0 / 17.8 | 53.5 / 91.4 | 91.6 / 50.0 | 54.6 / 59.4 |"""


def _sample(total: int, skip: int, size: int) -> list[int]:
    """A fixed (seed 0) sorted sample of ``size`` row indices among rows ``skip..total-1``."""
    return sorted(random.Random(0).sample(range(skip, total), min(size, total - skip)))


def run_evaluation(out: Path, threads: int | None) -> None:
    """Evaluate on the default host and write the report (Markdown + HTML, JSON, PNGs) into ``out``."""
    import torch

    from latent_guardrail import LatentGuard
    from latent_guardrail.datasets import read_calibration_sets, read_prompts
    from latent_guardrail.evaluation import EvalSettings, evaluate, sets_from_records, write_report
    from latent_guardrail.evaluation.runner import paper_variant
    from latent_guardrail.hosts import load_host

    if threads is not None:
        torch.set_num_threads(threads)
    if not DATA.is_dir():
        sys.exit(f"the public data sets are expected at {DATA} (../shared/data beside the clone)")
    advbench_all = read_prompts(DATA / "advbench" / "harmful_behaviors.csv", text_column="goal")
    advbench = [advbench_all[i] for i in _sample(len(advbench_all), ADVBENCH_SKIP, ADVBENCH_SAMPLE)]
    alpaca_all = read_prompts(DATA / "alpaca" / "alpaca_noinput_sample2000.jsonl")
    alpaca = [alpaca_all[i] for i in _sample(len(alpaca_all), ALPACA_SKIP, ALPACA_SAMPLE)]
    xstest_all = read_prompts(DATA / "xstest" / "xstest_prompts.csv")
    xstest = []
    for label in ("harmful", "harmless"):
        rows = [r for r in xstest_all if r.label == label]
        xstest += [rows[i] for i in _sample(len(rows), 0, XSTEST_SAMPLE)]
    sets = (sets_from_records("advbench-rest", "harmful", advbench, source="advbench/harmful_behaviors.csv")
            + sets_from_records("alpaca-rest", "harmless", alpaca, source="alpaca/alpaca_noinput_sample2000.jsonl")
            + sets_from_records("xstest", "labels", xstest, source="xstest/xstest_prompts.csv"))
    host = load_host("default")
    cal_h, cal_b = read_calibration_sets()
    tuned = LatentGuard.load("default", host)
    guards = {"paper": paper_variant(tuned), "tuned": tuned}   # paper rule on the same bundled-set centroids
    result = evaluate(guards, sets, settings=EvalSettings(max_new_tokens=MAX_NEW_TOKENS),
                      calibration_texts=[r.text for r in cal_h + cal_b],
                      reference_harmless=[r.text for r in cal_b])
    for path in write_report(result, out, "md"):
        print("wrote", path.relative_to(ROOT))


def run_guards_full(out: Path, threads: int | None) -> None:
    """The guards alone (no baselines: states only) on the full AdvBench-rest, 400 Alpaca-rest rows and all XSTest."""
    import torch

    from latent_guardrail import LatentGuard
    from latent_guardrail.datasets import read_prompts
    from latent_guardrail.evaluation import EvalSettings, evaluate, sets_from_records
    from latent_guardrail.evaluation.runner import paper_variant
    from latent_guardrail.hosts import load_host

    if threads is not None:
        torch.set_num_threads(threads)
    advbench = read_prompts(DATA / "advbench" / "harmful_behaviors.csv", text_column="goal")[ADVBENCH_SKIP:]
    alpaca_all = read_prompts(DATA / "alpaca" / "alpaca_noinput_sample2000.jsonl")
    alpaca = [alpaca_all[i] for i in _sample(len(alpaca_all), ALPACA_SKIP, FULL_ALPACA)]
    xstest = read_prompts(DATA / "xstest" / "xstest_prompts.csv")
    sets = (sets_from_records("advbench-rest", "harmful", advbench, source="advbench/harmful_behaviors.csv")
            + sets_from_records("alpaca-rest", "harmless", alpaca, source="alpaca/alpaca_noinput_sample2000.jsonl")
            + sets_from_records("xstest", "labels", xstest, source="xstest/xstest_prompts.csv"))
    host = load_host("default")
    tuned = LatentGuard.load("default", host)
    result = evaluate({"paper": paper_variant(tuned), "tuned": tuned}, sets, settings=EvalSettings(baselines=()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(result.report.model_dump_json(indent=2), encoding="utf-8")
    print("wrote", (out / "results.json").relative_to(ROOT))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def results_section(out: Path) -> str:
    """The README section, from ``out/results.json`` and ``out/bench.json`` (when present)."""
    from latent_guardrail.evaluation import EvalReport, summary_rows

    report = EvalReport.model_validate_json((out / "results.json").read_text(encoding="utf-8"))
    header, rows = summary_rows(report)
    lines = [START, "<!-- generated by scripts/make_results.py from docs/results/*.json: do not edit by hand -->", ""]
    sizes = ", ".join(f"{s.name} {s.n}" for s in report.sets)
    lines += [
        "## Results on the default host",
        "",
        f"Default host SmolLM2-135M-Instruct on CPU; both guards are calibrated on the bundled sets only "
        f"(no row of the evaluation sets; leakage check: {report.leakage or 'none'}). Sets ({sizes}): fixed "
        f"samples (seed 0) of AdvBench rows {ADVBENCH_SKIP}–519, Alpaca rows {ALPACA_SKIP}–1999 and XSTest "
        f"({XSTEST_SAMPLE} safe + {XSTEST_SAMPLE} unsafe), read from `../shared/data` by path; small because "
        "every prompt also runs three baselines on a 2-core CPU shared with other jobs. Baselines run on the "
        "same host: **keyword** = "
        f"refusal phrases in the host's own greedy answer ({report.settings.max_new_tokens} tokens, under a "
        "safety system prompt), **self_check** = the host asked \"should this message be blocked? Yes/No\" "
        "(NeMo `self check input` shape, log-odds > 0), **perplexity** = prefix/suffix log-perplexity under "
        "the host (NeMo jailbreak-heuristics shape, threshold at 5% FPR on the bundled harmless set).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
    ]
    xs = {rule.name: rule for rule in report.rules}
    lines += ["XSTest at each rule's own threshold (the paper's \"refused harmless\" column is the safe side):", "",
              "| rule | XSTest safe passed | XSTest unsafe flagged | XSTest AUROC | threshold |",
              "|---|---|---|---|---|"]
    for name, rule in xs.items():
        rates = {r.set: r.rate for r in rule.sets}
        group = rule.groups.get("xstest")
        lines.append(f"| {name} | {_pct(rates.get('xstest-harmless'))} | {_pct(rates.get('xstest-harmful'))} | "
                     f"{'n/a' if group is None or group.auroc is None else f'{group.auroc:.3f}'} | "
                     f"{rule.threshold:.4g} |")
    lines.append("")
    if report.behaviour:
        behaviour = ", ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for name, counts in report.behaviour.items())
        lines += [f"Host behaviour under the safety system prompt ({behaviour}).", ""]
    lines += ["![score histograms](docs/results/scores.png)", "![per-layer separation](docs/results/layers.png)",
              "![PCA of t_inst and t_post-inst states](docs/results/pca.png)", "![ROC curves](docs/results/roc.png)",
              "", "Full report: [docs/results/report.md](docs/results/report.md). Regenerate with "
              "`.venv/bin/python scripts/make_results.py` (cached by content hash) after `make bench`.", ""]
    full_file = out / "full" / "results.json"
    if full_file.is_file():
        full = EvalReport.model_validate_json(full_file.read_text(encoding="utf-8"))
        header, rows = summary_rows(full)
        lines += ["The guards alone on larger sets (no baselines, so affordable here: "
                  + ", ".join(f"{s.name} {s.n}" for s in full.sets) + "; AdvBench rows 100–519, a fixed sample of "
                  "Alpaca rows 100–1999, all of XSTest):", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  *["| " + " | ".join(row) + " |" for row in rows], ""]
    bench_file = out / "bench.json"
    if bench_file.is_file():
        lines += bench_section(json.loads(bench_file.read_text(encoding="utf-8")))
    lines += ["The paper's published table for 7–8B hosts (accuracy %, Latent Guard / Llama Guard 3 8B), quoted as "
              "the reference (not measured here):", "", PAPER_TABLE, "", END]
    return "\n".join(lines)


def bench_section(bench: dict[str, object]) -> list[str]:
    """Markdown lines of the benchmark table from ``bench.json`` (written by ``benchmarks/bench_all.py``)."""
    rows = bench.get("rows", [])
    lines = [f"Speed and size (`make bench`, {bench.get('machine', 'CPU')}, one run, ratios measured side by side):",
             "", "| measure | value | budget |", "|---|---|---|"]
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict):
                lines.append(f"| {row.get('measure')} | {row.get('value')} | {row.get('budget', '')} |")
    lines += ["", "Budgets assume an idle 2-core CPU; figures from a shared, loaded machine are slower and noisier "
              "(the "
              "ratios are still measured side by side in one run). Raw figures: `docs/results/bench.json`."]
    return [*lines, ""]


def write_readme(section: str) -> None:
    """Replace the marked section of the README (appended before '## LangChain' when the markers are missing)."""
    text = README.read_text(encoding="utf-8")
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        raise SystemExit(f"README.md has no {START} ... {END} markers; add them where the results belong")
    README.write_text(text, encoding="utf-8")
    print("updated README.md results section")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme-only", action="store_true", help="only rewrite the README from docs/results")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--full-guards", action="store_true",
                        help="also evaluate the guards alone on the larger sets (docs/results/full/)")
    args = parser.parse_args()
    if not args.readme_only:
        run_evaluation(args.out, args.threads)
        if args.full_guards:
            run_guards_full(args.out / "full", args.threads)
    write_readme(results_section(args.out))


if __name__ == "__main__":
    main()
