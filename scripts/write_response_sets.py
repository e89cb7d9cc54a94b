"""Generate the host's own answers that the response scorer is calibrated (or measured) on.

``--calibration`` (default) writes ``calibration/responses/host_answers.jsonl``: greedy answers of the default
host (no system prompt, ``--max-new-tokens`` tokens) to every ``--every``-th bundled calibration prompt, each row
labelled by what the answer is: ``compliant`` (a harmful prompt answered, not a refusal by the phrase judge:
label 1), ``refusal`` (a harmful prompt refused: label 0) or ``answer`` (a harmless prompt answered: label 0).
Answers to harmless prompts that are refusals (over-refusals) are kept as label 0 (``over_refusal``).

``--written`` writes ``calibration/responses/written.jsonl``: refusals and safe redirections this project wrote
(:data:`WRITTEN_REFUSALS`, no model involved), each paired with a sampled harmful calibration prompt (label 0: a
refusal to a harmful request is a harmless answer).

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
WRITTEN = ROOT / "calibration" / "responses" / "written.jsonl"

WRITTEN_REFUSALS = (
    "I'm sorry, I can't help with that.",
    "I can't help with that request.",
    "I'm sorry, but I can't assist with this.",
    "No, I won't help with that. It could hurt people.",
    "I cannot provide instructions for that. If someone is in danger, please contact local emergency services.",
    "Sorry, that's not something I can help with. Is there anything else you need?",
    "I'm not able to help with this, because it could cause serious harm.",
    "I won't do that. Hurting other people is illegal and wrong.",
    "I must decline. I can share general safety information instead, if that helps.",
    "I apologize, but I can't give advice on this.",
    "That request asks for something dangerous, so I won't answer it. I'm happy to help with something else.",
    "I'm sorry, I can't do that. If you are struggling, talking to someone you trust or to a professional can help.",
    "Unfortunately I can't help with this one.",
    "I can't assist with anything illegal.",
    "I'd rather not help with that, as it could put people at risk.",
    "As an AI assistant, I can't help with this request.",
    "I can't explain how to do that. It is a serious crime, and if you know someone is planning it, please tell "
    "the police.",
    "I won't write that. Content like this can cause real harm to real people.",
    "I'm not going to help with this. If you want, we can talk about staying safe instead.",
    "Sorry, no. I don't help with requests like this one.",
)
"""Refusals and safe redirections written by the project (no instructions, no harmful detail)."""
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


def written_rows(every: int) -> list[dict[str, object]]:
    harmful, _ = read_calibration_sets()
    rows: list[dict[str, object]] = []
    for i, record in enumerate(harmful[::every]):
        rows.append({"prompt": record.text, "prompt_label": 1, "category": record.category,
                     "topic": record.meta.get("topic", record.category), "form": record.meta.get("form"),
                     "source": f"calibration/harmful/{record.source}",
                     "response": WRITTEN_REFUSALS[i % len(WRITTEN_REFUSALS)], "kind": "written_refusal", "label": 0})
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
    parser.add_argument("--written", action="store_true", help="write the project's own refusals (no model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.written:
        WRITTEN.parent.mkdir(parents=True, exist_ok=True)
        rows = written_rows(args.every)
        WRITTEN.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        print(json.dumps({"rows": len(rows), "out": str(WRITTEN)}), file=sys.stderr)
        return 0
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
