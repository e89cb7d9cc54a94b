"""Run every benchmark on the default host and collect the ratios in one table (``make bench``).

    .venv/bin/python benchmarks/bench_all.py [--json docs/results/bench.json] [--quick]

Runs ``bench_core.py`` (calibration, check latency, early exit vs full forward, artifact), ``bench_guarded.py``
(guarded vs plain generation, latent check vs prompted self-check) and ``bench_throughput.py`` (prompts/s at
batch 1/8/32, calibration per 100 prompts, peak memory host alone vs host + guard) and ``bench_microbatch.py``
(checks/s at 16 concurrent clients through the micro-batcher vs sequential), each in its own process,
one after the other. ``--quick`` shrinks the sample sizes (for a loaded machine); the ratios stay side by side.
The JSON holds every raw figure plus ``rows`` (measure, value, budget) that ``scripts/make_results.py`` puts in
the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _run(script: str, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), "--json", str(out), *extra], check=True)
        print(f"[{script}: {time.perf_counter() - started:.0f}s]", flush=True)
        return dict(json.loads(out.read_text()))


def rows_from(core: dict[str, Any], guarded: dict[str, Any], throughput: dict[str, Any],
              microbatch: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The README rows: measure, value, budget."""
    cal_keys = sorted(k for k in core if k.startswith("calibrate_") and k.endswith("_s"))
    n_cal = cal_keys[0].split("_")[1] if cal_keys else "?"
    rows = [
        {"measure": "guarded generation / plain generation "
                    f"({guarded['tokens']} tokens, {guarded['rounds']} rounds × 3 prompts, medians)",
         "value": f"{guarded['guarded_vs_plain_ratio']:.3f}", "budget": "≤ 1.02"},
        {"measure": f"early-exit check (layers {core['early_exit_layers_read']}) / full forward",
         "value": f"{core['early_exit_vs_full_time_ratio']:.2f} ({core['early_exit_speedup']:.2f}× faster)",
         "budget": f"≤ {core['early_exit_expected_ratio_bound']:.2f}"},
        {"measure": "prompted self-check / latent check (standalone)",
         "value": f"{guarded['self_check_vs_latent_check_ratio']:.1f}× "
                  f"({guarded['self_check_ms']:.0f} ms / {guarded['latent_check_ms']:.0f} ms)",
         "budget": "≥ 10×"},
        {"measure": "marginal cost of the check inside guarded generation",
         "value": f"{guarded['marginal_check_in_guarded_generation_ms']:+.0f} ms", "budget": ""},
        {"measure": f"calibration, label-only, {n_cal} prompts (paper / tuned)",
         "value": " / ".join(f"{core[k]:.0f} s" for k in sorted(cal_keys)), "budget": "≤ 60 s for 200"},
        {"measure": f"calibration time per 100 prompts (tuned, {throughput['calibration_prompts']} prompts)",
         "value": f"{throughput['calibration_s_per_100_prompts']:.1f} s", "budget": "≤ 30 s"},
        {"measure": "throughput, check_batch at batch 1 / 8 / 32",
         "value": " / ".join(f"{throughput[f'throughput_batch{b}_prompts_per_s']:.2f}" for b in (1, 8, 32))
                  + " prompts/s", "budget": ""},
        {"measure": "throughput ratio batch 8 / batch 1, batch 32 / batch 1",
         "value": f"{throughput['throughput_batch8_vs_batch1']:.2f} / {throughput['throughput_batch32_vs_batch1']:.2f}",
         "budget": ""},
        {"measure": "peak RSS: host alone / host + guard",
         "value": f"{throughput['peak_rss_host_alone_mb']:.0f} MB / {throughput['peak_rss_host_plus_guard_mb']:.0f} MB "
                  f"(ratio {throughput['peak_rss_guard_vs_host_ratio']:.3f})", "budget": ""},
        {"measure": "artifact size / load with fingerprint check",
         "value": f"{core['artifact_bytes'] / 1e6:.2f} MB / {core['guard_load_with_fingerprint_check_ms']:.1f} ms",
         "budget": "≤ 2 MB / ≤ 50 ms"},
    ]
    if microbatch:
        rows.append({"measure": f"checks/s, {microbatch['clients']} concurrent clients (micro-batched) / sequential",
                     "value": f"{microbatch['concurrent_vs_sequential']:.2f}× (mean batch {microbatch['mean_batch']}, "
                              f"{microbatch['verdict_mismatches']} verdicts differ)", "budget": "≥ 1.5×"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smaller samples for a loaded machine")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in every benchmark")
    args = parser.parse_args()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs on the machine skew timings
    started = time.perf_counter()
    core = _run("bench_core.py", [*threads, *(["--calibration", "100"] if args.quick else [])])
    guarded = _run("bench_guarded.py", [*threads, *(["--rounds", "3", "--tokens", "16"] if args.quick else [])])
    throughput = _run("bench_throughput.py", [*threads, *(["--prompts", "16", "--calibration", "60"]
                                                         if args.quick else [])])
    microbatch = _run("bench_microbatch.py", [*threads, *(["--prompts", "32"] if args.quick else [])])
    rows = rows_from(core, guarded, throughput, microbatch)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores" + \
        (f", {args.threads} torch threads" if args.threads else "") + (", --quick sizes" if args.quick else "") + \
        (f", load average {load:.1f} at start" if load is not None else "")
    print(f"\nlatent-guardrail benchmarks ({machine}, {time.perf_counter() - started:.0f} s in all)")
    width = max(len(r["measure"]) for r in rows)
    for row in rows:
        print(f"  {row['measure']:<{width}}  {row['value']:<34} {row['budget']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "seconds": round(time.perf_counter() - started),
                                         "core": core, "guarded": guarded, "throughput": throughput,
                                         "microbatch": microbatch, "rows": rows}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
