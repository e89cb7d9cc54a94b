"""A digest of the default guard's verdicts over the bundled sets and XSTest (the refactoring yardstick).

``python scripts/verdict_digest.py`` prints the digest; ``--write`` stores it in
``tests/fixtures/verdict_digest.json``, which ``tests/integration/test_verdict_digest.py`` compares against.
Rewrite it only when a change is *meant* to move verdicts (a new default recipe), and say so in the commit.

The digest hashes, per prompt and in order: harmful, category, score, threshold, every layer score and every
category score, written with ``float.hex`` (bit-exact), plus t_inst / t_post_inst / token count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "verdict_digest.json"
XSTEST = ROOT.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"


def digest_prompts(root: Path | None = None, every: int = 1) -> list[str]:
    """The prompts the digest covers: the calibration sets (harmful, then harmless; the bundled ones unless
    ``root`` is given) and all of XSTest — every ``every``-th of them."""
    from latent_guardrail.datasets import read_calibration_sets, read_prompts

    harmful, harmless = read_calibration_sets(root)
    xstest = read_prompts(XSTEST)
    return ([r.text for r in harmful + harmless] + [r.text for r in xstest])[::every]


def verdict_line(verdict: object) -> str:
    """One canonical, bit-exact line for a verdict."""
    v = verdict  # a latent_guardrail.Verdict
    layers = ",".join(f"{k}:{float(x).hex()}" for k, x in sorted(v.layer_scores.items()))  # type: ignore[attr-defined]
    cats = ",".join(f"{k}:{float(x).hex()}" for k, x in sorted(v.category_scores.items()))  # type: ignore[attr-defined]
    return (f"{v.harmful}|{v.category}|{float(v.score).hex()}|{float(v.threshold).hex()}|{layers}|{cats}|"  # type: ignore[attr-defined]
            f"{v.t_inst}|{v.t_post_inst}|{v.num_tokens}|{v.status}")  # type: ignore[attr-defined]


def digest(verdicts: Sequence[object]) -> str:
    h = hashlib.sha256()
    for verdict in verdicts:
        h.update((verdict_line(verdict) + "\n").encode())
    return h.hexdigest()


def compute(guard: object | None = None, root: Path | None = None, every: int = 1) -> dict[str, object]:
    """The digest of ``guard`` (the default guard when None). With ``root``, a guard fitted the way the default
    guard is (tuned mode, labels only) on the calibration sets under ``root``, and the digest over those sets."""
    from latent_guardrail import LatentGuard
    from latent_guardrail.datasets import read_calibration_sets

    if guard is None and root is not None:
        harmful, harmless = read_calibration_sets(root)
        guard = LatentGuard.calibrate(None, harmful, harmless, mode="tuned", progress=False)
    guard = guard if guard is not None else LatentGuard.load("default", progress=False)
    prompts = digest_prompts(root, every)
    verdicts = guard.check_batch(prompts)  # type: ignore[attr-defined]
    return {"prompts": len(prompts), "every": every, "digest": digest(verdicts),
            "flagged": sum(v.harmful for v in verdicts),
            "fingerprint": guard.fingerprint}  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"store the digest in {FIXTURE.relative_to(ROOT)}")
    parser.add_argument("--calibration-root", type=Path, default=None,
                        help="fit on the harmful/ and harmless/ sets under this folder instead of the bundled ones")
    parser.add_argument("--every", type=int, default=3, help="digest every k-th prompt (3 keeps CI short)")
    args = parser.parse_args(argv)
    result = compute(root=args.calibration_root, every=args.every)
    print(json.dumps(result, indent=2))
    if args.write:
        FIXTURE.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
