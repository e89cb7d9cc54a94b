"""Fit the response part (the output rail) of the shipped default guard; its input part is left as it is.

    .venv/bin/python scripts/fit_default_response.py            # refit latent_guardrail/default_guard in place
    .venv/bin/python scripts/fit_default_response.py --out DIR  # or write the guard with the new part to DIR

Run it again whenever the default guard's input part is rebuilt (``make default-guard``; ``make
default-response`` runs this script): the input scorer, its settings and every input verdict stay as they were
(only the header's ``response`` section, its report and the ``response.*`` tensors change).

The fit: every bundled pair (``calibration/responses``: the host's own answers, every 4th written refusal —
:func:`latent_guardrail.response_fit.bundled_pairs`), families = the 13 risk categories (a look-alike's or twin's
topic counts for the category it imitates) and ``general``, residual layers 10, 12, ..., 26, windows of 3 layers,
the ``mean`` view (the running mean over the answer: it led the leave-one-family-out comparison of the three views
on these pairs, 0.89 against 0.77 for ``last``, and reading one view keeps the fit within the CPU budget), checks
every 8 tokens; two read-outs (compliance vs refusals, harm vs harmless answers — the harm read-out also reading the
prompt's t_inst state when it helps — combined by min), view / window / shrinkage / prompt weight (0 or 0.5) chosen
by leave-one-family-out AUROC; threshold log-odds 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard, load_host  # noqa: E402
from latent_guardrail.artifact import save_fitted  # noqa: E402
from latent_guardrail.response import ResponseOptions  # noqa: E402
from latent_guardrail.response_fit import add_response  # noqa: E402

LAYERS = tuple(range(10, 27, 2))
OPTIONS = ResponseOptions(every=8, num_layers=3, views=("mean",))
DEFAULT_DIR = ROOT / "latent_guardrail" / "default_guard"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where to write the guard (default: in place)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    host = load_host("default")
    guard = LatentGuard.load(str(DEFAULT_DIR), host, progress=False)
    start = time.perf_counter()
    fitted = add_response(host, guard.fitted, options=OPTIONS, layers=LAYERS)
    report = fitted.report["response"]
    save_fitted(fitted, args.out)
    print(json.dumps({"seconds": round(time.perf_counter() - start), "out": str(args.out),
                      **{k: report[k] for k in ("answers", "compliant", "read_outs", "view", "layers", "shrinkage",
                                                "cv_auroc", "cv_auroc_by_view", "heldout_detect_rate",
                                                "heldout_pass_rate")}}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
