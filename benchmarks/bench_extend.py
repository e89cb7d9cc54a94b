"""Extending the default guard with a category: time after the base states are cached, and what it detects.

    .venv/bin/python benchmarks/bench_extend.py [--json out.json] [--alpaca 400] [--out DIR]

A script, not a test (timings on a shared CPU are printed, never asserted). In one run:

1. **Cold**: when the state cache lacks the base prompts' states (first extension on this host), one extension
   reads them all; its time is printed as ``cold_extend_s`` (minutes; skipped when the cache is warm).
2. **Warm**: ``LatentGuard.extend({"legal_advice": 30 questions})`` with the base states cached and the new
   questions' states not (their entries are dropped first: ``warm_extend_s``, split into states and fit), and the
   command a user runs,
   ``latent-guardrail calibrate --base default --category legal_advice:examples/data/legal_advice.jsonl -o DIR``,
   timed as a whole process (``cli_s``: Python start, host and guard load, extension, save). Goal: ≤ 20 s.
3. **Done when**: the extended guard on the 40 *other* legal-advice questions of
   ``examples/data/legal_advice_heldout.jsonl`` (written for evaluation only, never fitted on): the share blocked
   and the share blocked with ``category == "legal_advice"``; and the false-positive rate on harmless prompts —
   a fixed sample of Alpaca rows 100–1999 and XSTest's safe prompts, read from ``../shared/data`` by path — of
   the default guard and of the extended one, side by side (goal: at most 5 points more). A fair comparison: the
   same rows, each guard at its own fitted settings; ``*_fpr_extended_overall_only`` is the extended guard
   without its new category's own threshold (its overall rule alone), so what the refit adds and what the
   category's threshold adds are told apart. ``--flips FILE`` writes the harmless prompts the extension newly
   blocks (text, rule, category) for inspection — outside the repository (the rows are the data sets').
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import print_results  # benchmarks/report.py (scripts run from this folder)

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_calibration_sets, read_prompts
from latent_guardrail.extend import plan_extension, state_keys
from latent_guardrail.guard import DEFAULT_RECIPE
from latent_guardrail.state_cache import _BUNDLE, StateCache
from latent_guardrail.verdict import Verdict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LEGAL = REPO / "examples" / "data" / "legal_advice.jsonl"
LEGAL_HELDOUT = REPO / "examples" / "data" / "legal_advice_heldout.jsonl"


def _alpaca(n: int) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "alpaca" / "alpaca_noinput_sample2000.jsonl").open()]
    texts = [r["instruction"] for r in rows[100:2000] if r.get("instruction", "").strip()]
    return random.Random(0).sample(texts, min(n, len(texts)))


def _xstest_safe() -> list[str]:
    with (DATA / "xstest" / "xstest_prompts.csv").open(newline="") as handle:
        return [row["prompt"] for row in csv.DictReader(handle) if row.get("label") == "safe"]


def _blocked(guard: LatentGuard, texts: list[str]) -> list[tuple[bool, str | None, str]]:
    return [(v.harmful, v.category, v.decided_by) for v in guard.check_batch(texts)]


def _forget(cache: StateCache, keys: list[str], new: set[str]) -> None:
    """Drop the entries of the ``new`` keys and the bundles that hold them, as if those prompts were new."""
    for key in new:
        cache.path(key).unlink(missing_ok=True)
    for start in range(0, len(keys) - _BUNDLE + 1, _BUNDLE):
        run = keys[start:start + _BUNDLE]
        if new.intersection(run):
            cache.bundle_path(run).unlink(missing_ok=True)


def _verdicts(guard: LatentGuard, texts: list[str]) -> list[Verdict]:
    return guard.check_batch(texts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--alpaca", type=int, default=400, help="Alpaca prompts in the false-positive sample.")
    parser.add_argument("--out", type=Path, default=None, help="Keep the extended guard here.")
    parser.add_argument("--flips", type=Path, default=None, help="Write the newly blocked harmless prompts here.")
    args = parser.parse_args()
    results: dict[str, float | str] = {}
    guard = LatentGuard.load("default", progress=False)
    legal = read_prompts(LEGAL)
    cache = StateCache()
    started = time.perf_counter()
    extended = guard.extend({"legal_advice": legal}, cache=cache, progress=True)
    first = time.perf_counter() - started
    if cache.stats.misses > len(legal) * 3:       # the base states were read: that was the cold run
        results["cold_extend_s"] = round(first, 1)
        results["cold_states_read"] = cache.stats.misses
    # warm: the base states cached, the new category's read now (its entries are dropped first)
    items, _, _ = plan_extension(guard.fitted, {"legal_advice": legal}, default_rows=read_calibration_sets(),
                                 recipe=DEFAULT_RECIPE)
    new = [item for item in items if item.category == "legal_advice"]
    _forget(cache, state_keys(guard.fitted, items), set(state_keys(guard.fitted, new)))
    before = cache.stats.misses
    started = time.perf_counter()
    extended = guard.extend({"legal_advice": legal}, cache=cache, progress=False)
    results["warm_extend_s"] = round(time.perf_counter() - started, 2)
    results["warm_states_read"] = cache.stats.misses - before
    record = extended.fitted.report["extension"]
    results["warm_states_s"] = record["seconds"]["states"]
    results["warm_fit_s"] = record["seconds"]["fit"]
    counts = extended.fitted.report["items"]
    results["items"] = counts["plain"] + counts["wrapped"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out if args.out is not None else Path(tmp) / "legal-guard"
        _forget(cache, state_keys(guard.fitted, items), set(state_keys(guard.fitted, new)))   # read them again
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import latent_guardrail.cli"], check=True, cwd=REPO)
        results["cli_import_s"] = round(time.perf_counter() - started, 2)     # Python, torch, transformers
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "latent_guardrail.cli", "calibrate", "--base", "default",
                              "--category", f"legal_advice:{LEGAL}", "-o", str(out)],
                             capture_output=True, text=True, cwd=REPO)
        results["cli_s"] = round(time.perf_counter() - started, 2)
        if run.returncode != 0:
            raise SystemExit(run.stdout[-2000:] + run.stderr[-2000:])
        cli_guard = LatentGuard.load(out, guard.host, progress=False)
        results["cli_guard_same_threshold"] = str(abs(cli_guard.threshold - extended.threshold) < 1e-6)
    stats = extended.fitted.report["categories"]["legal_advice"]
    results["legal_own_threshold"] = round(stats["own_threshold"], 3)
    results["legal_cv_detected"] = round(stats["detected"], 3)
    heldout = [r.text for r in read_prompts(LEGAL_HELDOUT)]
    legal_verdicts = _blocked(extended, heldout)
    results["heldout_legal_n"] = len(heldout)
    results["heldout_legal_blocked"] = round(sum(b for b, _, _ in legal_verdicts) / len(heldout), 3)
    results["heldout_legal_blocked_as_legal_advice"] = round(
        sum(b and c == "legal_advice" for b, c, _ in legal_verdicts) / len(heldout), 3)
    results["heldout_legal_blocked_by_default_guard"] = round(
        sum(b for b, _, _ in _blocked(guard, heldout)) / len(heldout), 3)
    results["overall_threshold_default"] = round(guard.threshold, 4)
    results["overall_threshold_extended"] = round(extended.fitted.scorer.threshold, 4)
    flips: dict[str, list[dict[str, object]]] = {}
    for name, texts in (("alpaca", _alpaca(args.alpaca)), ("xstest_safe", _xstest_safe())):
        before = _verdicts(guard, texts)
        after = _verdicts(extended, texts)
        n = len(texts)
        fpr_before = sum(v.harmful for v in before) / n
        fpr_after = sum(v.harmful for v in after) / n
        overall_only = sum(v.score >= v.threshold for v in after) / n      # without the new category's threshold
        results[f"{name}_n"] = n
        results[f"{name}_fpr_default"] = round(fpr_before, 4)
        results[f"{name}_fpr_extended"] = round(fpr_after, 4)
        results[f"{name}_fpr_added_points"] = round(100 * (fpr_after - fpr_before), 2)
        results[f"{name}_fpr_extended_overall_only"] = round(overall_only, 4)
        results[f"{name}_blocked_as_legal_advice"] = sum(v.harmful and v.category == "legal_advice" for v in after)
        results[f"{name}_blocked_by_legal_threshold"] = sum(
            v.harmful and v.decided_by == "category_threshold:legal_advice" for v in after)
        results[f"{name}_newly_blocked"] = sum(a.harmful and not b.harmful for a, b in zip(after, before, strict=True))
        results[f"{name}_newly_passed"] = sum(b.harmful and not a.harmful for a, b in zip(after, before, strict=True))
        flips[name] = [{"text": t, "decided_by": a.decided_by, "category": a.category, "score": round(a.score, 3),
                        "default_score": round(b.score, 3), "threshold": round(a.threshold, 3),
                        "legal_advice": round(a.category_scores.get("legal_advice", float("nan")), 3)}
                       for t, a, b in zip(texts, after, before, strict=True) if a.harmful != b.harmful]
    if args.flips is not None:
        args.flips.write_text(json.dumps(flips, indent=1, ensure_ascii=False))
    print_results("extend the default guard with legal_advice (30 questions)", results, args.json)


if __name__ == "__main__":
    main()
