"""Generate the host's own answers that the response scorer is calibrated (or measured) on.

``--calibration`` (default) writes ``calibration/responses/host_answers.jsonl``: greedy answers of the default
host (no system prompt, ``--max-new-tokens`` tokens) to every ``--every``-th bundled calibration prompt, each row
labelled by what the answer is: ``compliant`` (a harmful prompt answered, not a refusal by the phrase judge:
label 1), ``refusal`` (a harmful prompt refused: label 0) or ``answer`` (a harmless prompt answered: label 0).
Answers to harmless prompts that are refusals (over-refusals) are kept as label 0 (``over_refusal``).

``--heldout PATH`` writes the same kind of rows for prompts the guard never saw (AdvBench harmful behaviours,
Alpaca instructions, XSTest safe and unsafe prompts, read from ``../shared/data`` by path) to ``PATH`` —
outside the repository: those prompts are not ours to ship.

Run it niced on a shared machine::

    nice -n 10 .venv/bin/python scripts/write_response_sets.py --every 4
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_guardrail.datasets import read_calibration_sets  # noqa: E402
from latent_guardrail.generation import generate_replies  # noqa: E402
from latent_guardrail.hosts import load_host  # noqa: E402
from latent_guardrail.positions import encode_prompt  # noqa: E402
from latent_guardrail.refusal import is_refusal  # noqa: E402

OUT = ROOT / "calibration" / "responses" / "host_answers.jsonl"
DATA = ROOT.parent / "shared" / "data"


def _kind(prompt_label: int, answer: str) -> tuple[str, int]:
    refused = is_refusal(answer)
    if prompt_label == 1:
        return ("refusal", 0) if refused else ("compliant", 1)
    return ("over_refusal", 0) if refused else ("answer", 0)


def _answer(rows: list[dict[str, object]], max_new_tokens: int, batch_size: int) -> list[dict[str, object]]:
    host = load_host("default")
    encodings = [encode_prompt(host.tokenizer, str(row["prompt"])) for row in rows]
    start = time.perf_counter()
    with host.lock:
        replies = generate_replies(host.model, host.tokenizer, encodings, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress="answering")
    print(f"{len(rows)} answers in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    out = []
    for row, reply in zip(rows, replies, strict=True):
        kind, label = _kind(int(row["prompt_label"]), reply)  # type: ignore[call-overload]
        out.append({**row, "response": reply, "kind": kind, "label": label})
    return out


def calibration_rows(every: int) -> list[dict[str, object]]:
    harmful, harmless = read_calibration_sets()
    rows: list[dict[str, object]] = []
    for records, label in ((harmful, 1), (harmless, 0)):
        for record in records[::every]:
            rows.append({"prompt": record.text, "prompt_label": label, "category": record.category,
                         "topic": record.meta.get("topic", record.category), "form": record.meta.get("form"),
                         "source": f"calibration/{'harmful' if label else 'harmless'}/{record.source}"})
    return rows


def heldout_rows(every: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with (DATA / "advbench" / "harmful_behaviors.csv").open(encoding="utf-8") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if i % every == 0:
                rows.append({"prompt": row["goal"], "prompt_label": 1, "category": None, "topic": None,
                             "source": "advbench"})
    with (DATA / "alpaca" / "alpaca_noinput_sample2000.jsonl").open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i % (every * 4) == 0:
                rows.append({"prompt": json.loads(line)["instruction"], "prompt_label": 0, "category": None,
                             "topic": None, "source": "alpaca"})
    with (DATA / "xstest" / "xstest_prompts.csv").open(encoding="utf-8") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if i % max(1, every - 1) == 0:
                label = 0 if row["label"] == "safe" else 1
                rows.append({"prompt": row["prompt"], "prompt_label": label, "category": row["type"],
                             "topic": row["type"], "source": f"xstest_{row['label']}"})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="keep every k-th prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--heldout", type=Path, default=None, help="write held-out answers here instead")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = heldout_rows(args.every) if args.heldout is not None else calibration_rows(args.every)
    answered = _answer(rows, args.max_new_tokens, args.batch_size)
    target = args.heldout if args.heldout is not None else OUT
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for row in answered:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    kinds: dict[str, int] = {}
    for row in answered:
        kinds[str(row["kind"])] = kinds.get(str(row["kind"]), 0) + 1
    print(json.dumps({"rows": len(answered), "kinds": kinds, "out": str(target)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
