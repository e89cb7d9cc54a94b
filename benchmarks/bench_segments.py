"""Segment mode vs the single pass, side by side in one run (a script, not a test).

    .venv/bin/python benchmarks/bench_segments.py [--json out.json] [--rounds 3]

The same prompts are checked with the default guard in its normal mode (one forward pass per prompt, every
clause end read) and in segment mode (``GuardSettings.segments``: every sentence group of the user's text is
also judged as an instruction of its own, in the same batch). Prompts: short ones (one sentence, where segment
mode adds nothing) and long ones of three held-out long-form texts each (over ``segment_chars``, where it adds
one sequence per sentence group). Prints the median time of each and their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_core import _timed  # benchmarks/bench_core.py: median time of repeated calls
from report import print_results  # benchmarks/report.py (scripts run from this folder)

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_prompts

HELDOUT = Path(__file__).resolve().parents[1] / "heldout"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    guard = LatentGuard.load("default", progress=False)
    segmented = guard.with_settings(segments=True)
    rows = [r.text for r in read_prompts(HELDOUT / "harmless_longform.jsonl")]
    long_texts = [" ".join(rows[i:i + 3]) for i in range(0, 48, 3)]       # 16 texts of 3 long-form posts each
    short_texts = [r.text for r in read_prompts(HELDOUT / "everyday.jsonl")][:16]
    results: dict[str, float | str] = {}
    for name, texts in (("short", short_texts), ("long", long_texts)):
        guard.check_batch(texts)  # warm-up
        single = _timed(lambda t=texts: guard.check_batch(t), args.rounds)
        seg = _timed(lambda t=texts: segmented.check_batch(t), args.rounds)
        results[f"{name}_single_s"] = round(single, 3)
        results[f"{name}_segments_s"] = round(seg, 3)
        results[f"{name}_segments_over_single"] = round(seg / single, 2)
    print_results("segment mode vs single pass (16 prompts per batch, medians)", results, args.json)


if __name__ == "__main__":
    main()
