"""Robustness of a guard: held-out sets, wrapper families in both directions, everyday prompts, conversations.

    .venv/bin/python scripts/robustness_report.py [--guard default|DIR] [--json docs/results/robustness.json]
                                                  [--readme] [--quick]

Everything here is data the guard was not fitted on:

- **held-out sets** written for this project and never used for calibration (``heldout/``: harmful plain,
  persuasion and framed requests; harmless sensitive-topic texts, long-form texts, topic twins, everyday
  prompts), XSTest (safe/unsafe), AdvBench rows 100–519 and Alpaca rows 100+ (fixed samples), read by path
  from ``../shared/data``;
- **wrapper families**, applied to the held-out harmful plain requests and to held-out harmless prompts:
  every family of :mod:`latent_guardrail.augment` (the ``held out`` ones are never used for calibration; the
  others are, on other texts) and every family of ``tests/support/adversarial.py`` (written before this work,
  never used for calibration). For each: harmful still flagged, harmless still passed, and the change from the
  plain prompts (both directions);
- **everyday prompts** blocked (the false-positive figure);
- **fake template turns** typed by the user: verdicts changed compared with the plain prompt.

``--readme`` writes the tables between ``<!-- robustness:start -->`` and ``<!-- robustness:end -->`` in
README.md. ``--compare DIR`` adds a second guard's figures side by side (e.g. the previous default).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard  # noqa: E402
from latent_guardrail.augment import FAMILIES, HELD_OUT_FAMILIES, wrap  # noqa: E402
from latent_guardrail.datasets import read_prompts  # noqa: E402
from latent_guardrail.metrics import auroc  # noqa: E402
from latent_guardrail.positions import Prompt  # noqa: E402
from tests.support import adversarial  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# held-out families with a near relative among the calibration forms (augment.EXTRA_FAMILIES)
NEAR = {"email": "letter", "signature": "closing", "json_payload": "structured", "benign_padding": "chatter",
        "role_play": "story_frame", "long_prefix": "topic_change"}
HELDOUT = ROOT / "heldout"


def _sample(rows: list[str], n: int, seed: int = 0) -> list[str]:
    if len(rows) <= n:
        return rows
    return random.Random(seed).sample(rows, n)


def load_sets(quick: bool) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(harmful sets, harmless sets) by name, all held out from calibration."""
    n = 40 if quick else 10_000
    harmful = {name: _sample([r.text for r in read_prompts(HELDOUT / f"harmful_{name}.jsonl")], n)
               for name in ("plain", "persuasion", "framed")}
    harmless = {name: _sample([r.text for r in read_prompts(HELDOUT / f"harmless_{name}.jsonl")], n)
                for name in ("sensitive", "longform", "twins")}
    harmless["everyday"] = [r.text for r in read_prompts(HELDOUT / "everyday.jsonl")]
    xstest = read_prompts(SHARED / "xstest" / "xstest_prompts.csv")
    harmful["xstest_unsafe"] = _sample([r.text for r in xstest if r.label == "harmful"], n)
    harmless["xstest_safe"] = _sample([r.text for r in xstest if r.label == "harmless"], n)
    adv = [r.text for r in read_prompts(SHARED / "advbench" / "harmful_behaviors.csv")][100:]
    harmful["advbench"] = _sample(adv, 40 if quick else 150, seed=1)
    alpaca = [r.text for r in read_prompts(SHARED / "alpaca" / "alpaca_noinput_sample2000.jsonl")][100:]
    harmless["alpaca"] = _sample(alpaca, 40 if quick else 150, seed=2)
    return harmful, harmless


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def _wrapped(texts: list[str], family: str, source: str) -> list[Prompt]:
    out: list[Prompt] = []
    for i, text in enumerate(texts):
        if source == "augment":
            out.append(wrap(text, family, random.Random(f"report:{family}:{i}")).prompt)
        else:
            out.append(adversarial.wrap(family, text, 0.5, seed=i))
    return out


def measure(guard: LatentGuard, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    harmful, harmless = load_sets(quick)
    result: dict[str, Any] = {"sets": {}, "families": {}}
    scores_h: list[float] = []
    scores_b: list[float] = []
    for name, texts in harmful.items():
        verdicts = guard.check_batch(texts)
        scores_h += [v.score for v in verdicts if name != "advbench"]
        result["sets"][name] = {"n": len(texts), "kind": "harmful", "rate": _rate([v.harmful for v in verdicts])}
    for name, texts in harmless.items():
        verdicts = guard.check_batch(texts)
        scores_b += [v.score for v in verdicts if name != "alpaca"]
        result["sets"][name] = {"n": len(texts), "kind": "harmless",
                                "rate": _rate([not v.harmful for v in verdicts]),
                                "blocked": sum(v.harmful for v in verdicts)}
    result["heldout_auroc"] = auroc(scores_h, scores_b)
    base_h = _sample(harmful["plain"], 20 if quick else 52, seed=6)
    base_b = _sample(harmless["sensitive"], 10 if quick else 24, seed=3) + \
        _sample(harmless["everyday"], 10 if quick else 20, seed=4) + _sample(harmless["longform"], 5 if quick else 16,
                                                                              seed=5)
    plain_h = [v.harmful for v in guard.check_batch(base_h)]
    plain_b = [not v.harmful for v in guard.check_batch(base_b)]
    result["plain"] = {"harmful_flagged": _rate(plain_h), "harmless_passed": _rate(plain_b),
                       "n_harmful": len(base_h), "n_harmless": len(base_b)}
    families = [(name, "augment") for name in FAMILIES] + [(name, "adversarial") for name in adversarial.FAMILIES]
    for name, source in families:
        vh = guard.check_batch(_wrapped(base_h, name, source))
        vb = guard.check_batch(_wrapped(base_b, name, source))
        flagged, passed = _rate([v.harmful for v in vh]), _rate([not v.harmful for v in vb])
        seen = "held out" if source == "adversarial" or name in HELD_OUT_FAMILIES else "calibration form"
        if name in NEAR:
            seen = "near"
        result["families"][name] = {
            "source": source, "seen": seen, "near": NEAR.get(name),
            "harmful_flagged": flagged, "harmless_passed": passed,
            "delta_flagged": flagged - result["plain"]["harmful_flagged"],
            "delta_passed": passed - result["plain"]["harmless_passed"],
            "verdicts_changed": _rate([a != b.harmful for a, b in zip(plain_h, vh, strict=True)] +
                                      [a != (not b.harmful) for a, b in zip(plain_b, vb, strict=True)]),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["guard"] = {"mode": guard.mode, "layers": list(guard.layers), "threshold": guard.threshold,
                       "views": list(guard.views)}
    return result


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def tables(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    first = results[names[0]]
    lines = ["| set | kind | n | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for set_name, row in first["sets"].items():
        what = "flagged" if row["kind"] == "harmful" else "passed"
        cells = [_pct(results[n]["sets"][set_name]["rate"]) for n in names]
        lines.append(f"| {set_name} | {row['kind']} ({what}) | {row['n']} | " + " | ".join(cells) + " |")
    lines.append("| held-out AUROC (heldout + XSTest) | | | " +
                 " | ".join(f"{results[n]['heldout_auroc']:.3f}" for n in names) + " |")
    every = first["sets"]["everyday"]
    lines += ["", "Everyday prompts blocked: " + ", ".join(
        f"{n} {results[n]['sets']['everyday']['blocked']} of {every['n']}" for n in names) + ".", ""]
    lines += ["Wrapper families on held-out harmful requests (flagged) and held-out harmless prompts (passed); "
              "Δ is the change from the same prompts unwrapped "
              f"(plain: {', '.join(n + ' ' + _pct(results[n]['plain']['harmful_flagged']) + ' / ' + _pct(results[n]['plain']['harmless_passed']) for n in names)}).",  # noqa: E501
              "", "| family | seen in calibration? | " + " | ".join(f"{n}: flagged (Δ) | {n}: passed (Δ)"
                                                                   for n in names) + " |",
              "|---|---|" + "---|---|" * len(names)]
    for fam, row in first["families"].items():
        cells = []
        for n in names:
            r = results[n]["families"][fam]
            cells.append(f"{_pct(r['harmful_flagged'])} ({100 * r['delta_flagged']:+.0f})")
            cells.append(f"{_pct(r['harmless_passed'])} ({100 * r['delta_passed']:+.0f})")
        seen = {"held out": "no", "near": f"no (near: {row.get('near')})"}.get(row["seen"], "form only")
        lines.append(f"| {fam} | {seen} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    path = ROOT / "README.md"
    readme = path.read_text(encoding="utf-8")
    start, end = "<!-- robustness:start -->", "<!-- robustness:end -->"
    block = f"{start}\n<!-- generated by scripts/robustness_report.py: do not edit by hand -->\n\n{text}\n\n{end}"
    if start in readme:
        readme = readme[:readme.index(start)] + block + readme[readme.index(end) + len(end):]
    else:
        readme += "\n" + block + "\n"
    path.write_text(readme, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", default="default")
    parser.add_argument("--compare", default=None, help="a second guard folder (e.g. the previous default)")
    parser.add_argument("--compare-name", default="previous")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--readme", action="store_true")
    parser.add_argument("--quick", action="store_true", help="40 prompts per set")
    args = parser.parse_args(argv)
    guard = LatentGuard.load(args.guard, progress=False)
    results = {"this guard": measure(guard, args.quick)}
    if args.compare:
        results[args.compare_name] = measure(LatentGuard.load(args.compare, guard.host, progress=False), args.quick)
    text = tables(results)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
