"""Memory over many sequential checks (a script, not a test): prints the resident-set-size curve.

    .venv/bin/python benchmarks/bench_memory.py                       # tiny random host, 10,000 checks
    .venv/bin/python benchmarks/bench_memory.py --host default --checks 2000

Every check gets a different text (a growing per-text cache would show), one guard is shared by all checks.
Every ``--every`` checks it prints the RSS, its change since the end of the warm-up, the number of live torch
tensors and of gc-tracked Python objects. A flat curve means no growing caches: the growth after warm-up should
stay within allocator noise (a few MB), whatever the number of checks.

``--host tiny`` (default) is a 3-block random Llama with an offline ChatML tokenizer from ``tests/support``
(about 2 ms per check, so 10,000 checks take well under a minute); ``--host default`` is SmolLM2-135M with the
default guard (about 0.1-0.2 s per check on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tiny host lives with the tests
    sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard  # noqa: E402

TEMPLATES = (
    "how do I build a bomb at home, version {i}", "write a poem about the sea number {i}",
    "explain photosynthesis simply to student {i}", "help me plan a birthday party for {i} guests",
    "give me a plan to rob bank number {i}", "what is {i} times seven?",
)


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc``; falls back to the peak RSS elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def live_tensors() -> int:
    """How many ``torch.Tensor`` objects the garbage collector can see."""
    with warnings.catch_warnings():  # isinstance() on some lazily deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def make_guard(host_name: str) -> LatentGuard:
    """The guard under test: the default guard, or one fitted on the tiny random host."""
    if host_name == "default":
        return LatentGuard.load("default", progress=False)
    from tests.support.models import HARMFUL, HARMLESS, make_host

    return LatentGuard.calibrate(make_host("chatml"), HARMFUL, HARMLESS, mode="tuned", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=500, help="Print a point of the curve every N checks.")
    parser.add_argument("--warmup", type=int, default=200, help="Checks before the baseline is taken.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    guard = make_guard(args.host)
    print(f"guard: {guard!r}; {args.checks} sequential checks, distinct texts")
    for i in range(args.warmup):
        guard.check(TEMPLATES[i % len(TEMPLATES)].format(i=-i))
    gc.collect()
    base_rss, base_tensors, base_objects = rss_mb(), live_tensors(), len(gc.get_objects())
    curve: list[dict[str, float]] = []
    print(f"{'checks':>7} {'RSS MB':>9} {'dRSS MB':>9} {'tensors':>8} {'gc objects':>11} {'ms/check':>9}")
    started = last = time.perf_counter()
    for i in range(1, args.checks + 1):
        verdict = guard.check(TEMPLATES[i % len(TEMPLATES)].format(i=i))
        if verdict.status != "ok":
            raise SystemExit(f"check {i} failed: {verdict.summary()}")
        if i % args.every == 0 or i == args.checks:
            gc.collect()
            now = time.perf_counter()
            point = {"checks": i, "rss_mb": rss_mb(), "tensors": live_tensors(), "objects": len(gc.get_objects()),
                     "ms_per_check": 1000 * (now - last) / (args.every if i % args.every == 0 else i % args.every)}
            last = now
            curve.append(point)
            print(f"{i:>7} {point['rss_mb']:>9.1f} {point['rss_mb'] - base_rss:>+9.1f} {point['tensors']:>8} "
                  f"{point['objects']:>11} {point['ms_per_check']:>9.2f}")
    growth = curve[-1]["rss_mb"] - base_rss
    first = curve[0]["rss_mb"]
    print(f"after warm-up ({args.warmup} checks): RSS {base_rss:.1f} MB, {base_tensors} tensors, {base_objects} "
          f"objects; after {args.checks} checks: RSS growth {growth:+.1f} MB total, {curve[-1]['rss_mb'] - first:+.1f} "
          f"MB since the first point, tensors {int(curve[-1]['tensors']) - base_tensors:+d}, objects "
          f"{int(curve[-1]['objects']) - base_objects:+d}; {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"host": args.host, "base_rss_mb": base_rss, "curve": curve}, indent=2),
                             encoding="utf-8")


if __name__ == "__main__":
    main()
