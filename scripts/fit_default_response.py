"""Fit the response part of the default guard as shipped (a subsample of the bundled pairs, under a CPU budget).

    nice -n 10 .venv/bin/python scripts/fit_default_response.py OUT_DIR
    .venv/bin/latent-guardrail add-response default --from OUT_DIR      # into the shipped guard, input part kept

The full fit (``latent-guardrail add-response default``: all 870 bundled pairs, about 16 layers, one family per
topic) took more CPU than the shared 2-core machine had before the deadline, so the shipped part is fitted on a
deterministic subsample: every 2nd compliant answer, every 3rd harmless answer, every refusal and over-refusal of
the host, every 8th written refusal (292 pairs, 101 compliant); families are the 13 risk categories (a harmful
prompt's, or a look-alike's / twin's topic) and ``general``; layers 4, 8, ..., 24; every view; checks every 8
tokens; threshold at 5 % held-out false stops.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard, load_host  # noqa: E402
from latent_guardrail.artifact import save_fitted  # noqa: E402
from latent_guardrail.response import ResponseOptions  # noqa: E402
from latent_guardrail.response_fit import ResponsePair, add_response, read_response_sets  # noqa: E402

CATEGORIES = {"weapons", "violence", "cybercrime", "fraud", "drugs", "hate_harassment", "self_harm", "sexual_minors",
              "privacy", "misinformation", "extremism", "discrimination", "theft"}
STEPS = {"compliant": 2, "answer": 3, "refusal": 1, "over_refusal": 1, "written_refusal": 8}
LAYERS = (4, 8, 12, 16, 20, 24)


def subsample() -> list[ResponsePair]:
    keep, seen = [], {}
    for pair in read_response_sets():
        seen[pair.kind] = seen.get(pair.kind, 0) + 1
        if (seen[pair.kind] - 1) % STEPS.get(pair.kind, 4) == 0:
            group = pair.group if pair.group in CATEGORIES else "general"
            keep.append(ResponsePair(pair.prompt, pair.response, pair.label, group, pair.kind))
    return keep


def main() -> int:
    out = Path(sys.argv[1])
    host = load_host("default")
    guard = LatentGuard.load("default", host, progress=False)
    start = time.perf_counter()
    fitted = add_response(host, guard.fitted, subsample(), options=ResponseOptions(every=8), layers=LAYERS)
    report = fitted.report["response"]
    print(f"fit in {time.perf_counter() - start:.0f}s: view {report['view']}, layers {report['layers']}, "
          f"cv_auroc {report['cv_auroc']:.3f}")
    save_fitted(fitted, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
