"""Throughput, calibration time and peak memory on the default host (a script, not a test).

    .venv/bin/python benchmarks/bench_throughput.py [--prompts 32] [--calibration 100] [--json out.json]

Measured side by side in one run:
- throughput of ``guard.check_batch`` in prompts/s at batch size 1, 8 and 32 (same prompts), and the ratios;
- calibration time per 100 prompts (label-only, tuned mode: half harmful, half harmless bundled prompts);
- peak resident memory of the host alone (one forward pass) vs host + guard (load the default guard, check the
  same prompts), each in a fresh subprocess so one peak cannot hide the other.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from report import print_results  # benchmarks/report.py (scripts run from this folder)

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.hosts import load_host
from latent_guardrail.positions import encode_batch, pad_batch

BATCHES = (1, 8, 32)


def _prompts(count: int) -> list[str]:
    harmful, harmless = read_calibration_sets()
    mixed = [r.text for pair in zip(harmful[::5], harmless[::5], strict=False) for r in pair]
    return mixed[:count]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def memory_child(which: str, count: int) -> None:
    """Run in a subprocess: load the host (and guard), process ``count`` prompts, print the peak RSS in MB."""
    prompts = _prompts(count)
    host = load_host("default")
    if which == "host":
        batch = pad_batch(encode_batch(host.tokenizer, prompts), host.tokenizer.pad_token_id)
        with torch.inference_mode():
            host.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                       logits_to_keep=1)  # a serving prefill: only the next-token logits
    else:
        LatentGuard.load("default", host, progress=False).check_batch(prompts)
    print(json.dumps({"peak_mb": round(_peak_mb(), 1)}))


def _child_peak(which: str, count: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", which, "--prompts", str(count),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts per throughput run")
    parser.add_argument("--calibration", type=int, default=100, help="prompts calibrated (half harmful)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--memory-child", choices=("host", "guard"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.prompts)
        return
    results: dict[str, float | str] = {}
    host = load_host("default")
    guard = LatentGuard.load("default", host, progress=False)
    prompts = _prompts(args.prompts)
    guard.check_batch(prompts[:2])  # warm-up
    for size in BATCHES:
        sized = guard.with_settings(batch_size=size)
        start = time.perf_counter()
        sized.check_batch(prompts)
        results[f"throughput_batch{size}_prompts_per_s"] = round(len(prompts) / (time.perf_counter() - start), 2)
    base = float(results["throughput_batch1_prompts_per_s"])
    for size in BATCHES[1:]:
        results[f"throughput_batch{size}_vs_batch1"] = round(float(results[f"throughput_batch{size}_prompts_per_s"])
                                                             / base, 2)

    harmful, harmless = read_calibration_sets()
    half = args.calibration // 2
    start = time.perf_counter()
    LatentGuard.calibrate(host, harmful[::3][:half], harmless[::4][:half], mode="tuned", progress=False)
    seconds = time.perf_counter() - start
    results["calibration_prompts"] = 2 * half
    results["calibration_s_per_100_prompts"] = round(100 * seconds / (2 * half), 1)

    threads = torch.get_num_threads()
    host_peak = _child_peak("host", len(prompts), threads)
    guard_peak = _child_peak("guard", len(prompts), threads)
    results["peak_rss_host_alone_mb"] = host_peak
    results["peak_rss_host_plus_guard_mb"] = guard_peak
    results["peak_rss_guard_vs_host_ratio"] = round(guard_peak / host_peak, 3)

    print_results(f"latent-guardrail throughput/calibration/memory benchmark (default host, {threads} threads)",
                  results, args.json)


if __name__ == "__main__":
    main()
