"""Core speed/size benchmark on the default host (a script, not a test). Prints ratios measured in one run.

    .venv/bin/python benchmarks/bench_core.py [--json out.json]

- calibration time for 200 prompts (100 harmful + 100 harmless, label-only), tuned and paper mode
- check latency per prompt at batch 1 and batch 16
- early-exit check vs a full forward pass of the same prompts (time ratio vs (L+1)/num_layers)
- artifact size and load time
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from report import print_results  # benchmarks/report.py (scripts run from this folder)

from latent_guardrail import LatentGuard
from latent_guardrail.artifact import load_fitted
from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.hosts import load_host
from latent_guardrail.positions import pad_batch


def _timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--calibration", type=int, default=200, help="prompts calibrated (half harmful)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, float | str] = {}
    start = time.perf_counter()
    host = load_host("default")
    results["host_load_s"] = round(time.perf_counter() - start, 2)
    harmful, harmless = read_calibration_sets()
    half = args.calibration // 2
    sample_h, sample_b = harmful[::3][:half], harmless[::4][:half]

    for mode in ("paper", "tuned"):
        start = time.perf_counter()
        guard = LatentGuard.calibrate(host, sample_h, sample_b, mode=mode, progress=False)
        results[f"calibrate_{2 * half}_{mode}_s"] = round(time.perf_counter() - start, 2)
    prompts = [r.text for r in harmful[1::7][:16]] + [r.text for r in harmless[1::9][:16]]

    results["check_batch1_ms_per_prompt"] = round(
        1000 * _timed(lambda: [guard.check(p) for p in prompts[:8]], 3) / 8, 1)
    results["check_batch16_ms_per_prompt"] = round(1000 * _timed(lambda: guard.check_batch(prompts[:16]), 3) / 16, 1)

    encodings = [guard.encode(p) for p in prompts[:16]]
    batch = pad_batch(encodings, host.tokenizer.pad_token_id)

    def full_forward() -> None:
        with torch.inference_mode():
            host.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)

    def early_exit() -> None:
        guard.states(encodings)

    full = _timed(full_forward)
    early = _timed(early_exit)
    last = max(guard.layers)
    results["early_exit_layers_read"] = str(list(guard.layers))
    results["early_exit_vs_full_time_ratio"] = round(early / full, 3)
    results["early_exit_expected_ratio_bound"] = round((last + 1) / host.num_blocks + 0.05, 3)
    results["early_exit_speedup"] = round(full / early, 2)

    with tempfile.TemporaryDirectory() as tmp:
        folder = guard.save(Path(tmp) / "g")
        size = sum(f.stat().st_size for f in folder.iterdir())
        results["artifact_bytes"] = size
        results["artifact_load_ms"] = round(1000 * _timed(lambda: load_fitted(folder), 10), 2)
        results["guard_load_with_fingerprint_check_ms"] = round(
            1000 * _timed(lambda: LatentGuard.load(folder, host), 10), 2)

    print_results(f"latent-guardrail core benchmark (default host, CPU threads = {torch.get_num_threads()})",
                  results, args.json)


if __name__ == "__main__":
    main()
