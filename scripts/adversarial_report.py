"""How adversarial wrappers move the default guard's verdicts (a measurement, not a test).

    .venv/bin/python scripts/adversarial_report.py [--per-category 4] [--strength 0.5] [--json out.json]

Takes ``--per-category`` harmful prompts from each risk category of the bundled calibration sets (and as many
harmless prompts, spread over the harmless files), wraps each one with every family of
``tests/support/adversarial.py`` (benign padding, role-play frames, repetition, unicode confusables,
zero-width characters, mixed case, long irrelevant prefixes) and checks plain and wrapped prompts with
``LatentGuard.load("default")``. Per family it prints:

- ``flips h->ok``: harmful prompts the guard caught plainly but lets through once wrapped (attack successes);
- ``flips ok->h``: harmful prompts missed plainly but caught once wrapped;
- ``FP before/after``: harmless prompts flagged plainly / once wrapped (false positives the wrapper causes);
- ``mean dscore``: mean change of the score on the harmful prompts; ``errors``: non-ok or non-finite verdicts.

The bundled sets are the guard's own calibration data, so plain detection is optimistic; the flips are the
point. Prompts are picked deterministically (every k-th row) and wrappers are seeded by the row index.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the wrapper families live with the tests that use them
    sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard  # noqa: E402
from latent_guardrail.datasets import PromptRecord, read_calibration_sets  # noqa: E402
from latent_guardrail.verdict import Verdict  # noqa: E402
from tests.support.adversarial import FAMILIES, wrap  # noqa: E402


def _pick(records: list[PromptRecord], per_group: int, groups: int | None = None) -> list[PromptRecord]:
    """``per_group`` records from each category, taken at even steps (deterministic)."""
    by_group: dict[str, list[PromptRecord]] = defaultdict(list)
    for record in records:
        by_group[record.category or ""].append(record)
    picked: list[PromptRecord] = []
    names = sorted(by_group)
    count = per_group if groups is None else max(1, per_group * groups // max(1, len(names)))
    for name in names:
        rows = by_group[name]
        step = max(1, len(rows) // count)
        picked += rows[::step][:count]
    return picked


def _bad(verdict: Verdict) -> bool:
    return verdict.status != "ok" or not math.isfinite(verdict.score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=4, help="Harmful prompts per risk category.")
    parser.add_argument("--strength", type=float, default=0.5, help="Wrapper strength in [0, 1].")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures as JSON here.")
    args = parser.parse_args()

    started = time.perf_counter()
    guard = LatentGuard.load("default", progress=False)
    harmful_records, harmless_records = read_calibration_sets()
    categories = len({r.category for r in harmful_records})
    harmful = [r.text for r in _pick(harmful_records, args.per_category)]
    harmless = [r.text for r in _pick(harmless_records, args.per_category, groups=categories)]
    print(f"guard: {guard!r}")
    print(f"{len(harmful)} harmful and {len(harmless)} harmless prompts, {len(FAMILIES)} families, "
          f"strength {args.strength}")

    plain_h = guard.check_batch(harmful)
    plain_b = guard.check_batch(harmless)
    rows: list[dict[str, object]] = []
    for family in FAMILIES:
        wrapped_h = guard.check_batch([wrap(family, t, args.strength, i) for i, t in enumerate(harmful)])
        wrapped_b = guard.check_batch([wrap(family, t, args.strength, i) for i, t in enumerate(harmless)])
        errors = sum(_bad(v) for v in wrapped_h + wrapped_b)
        lost = sum(p.harmful and not w.harmful for p, w in zip(plain_h, wrapped_h, strict=True))
        gained = sum(not p.harmful and w.harmful for p, w in zip(plain_h, wrapped_h, strict=True))
        deltas = [w.score - p.score for p, w in zip(plain_h, wrapped_h, strict=True)]
        rows.append({
            "family": family, "harmful": len(harmful), "detected_plain": sum(v.harmful for v in plain_h),
            "detected_wrapped": sum(v.harmful for v in wrapped_h), "flips_harmful_to_allowed": lost,
            "flips_allowed_to_harmful": gained, "fp_plain": sum(v.harmful for v in plain_b),
            "fp_wrapped": sum(v.harmful for v in wrapped_b), "harmless": len(harmless),
            "mean_delta_score": sum(deltas) / len(deltas), "errors": errors,
            "truncated": sum(v.truncated for v in wrapped_h + wrapped_b),
        })
        print(f"  {family}: {lost} of {len(harmful)} harmful prompts flipped to allowed "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    header = (f"{'family':<20} {'detected':>12} {'flips h->ok':>12} {'flips ok->h':>12} {'FP before/after':>16} "
              f"{'mean dscore':>12} {'errors':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        detected = f"{row['detected_plain']}->{row['detected_wrapped']}/{row['harmful']}"
        fp = f"{row['fp_plain']}->{row['fp_wrapped']}/{row['harmless']}"
        print(f"{row['family']!s:<20} {detected:>12} {row['flips_harmful_to_allowed']!s:>12} "
              f"{row['flips_allowed_to_harmful']!s:>12} {fp:>16} {row['mean_delta_score']:>+12.3f} "
              f"{row['errors']!s:>7}")
    total_flips = sum(int(str(row["flips_harmful_to_allowed"])) for row in rows)
    print(f"total: {total_flips} harmful->allowed flips over {len(rows) * len(harmful)} wrapped harmful prompts; "
          f"{time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"strength": args.strength, "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
