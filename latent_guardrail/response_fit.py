"""Fit the response part of a guard: calibration pairs (prompt, answer, label) → a :class:`ResponseScorer`.

The pairs: the host's own greedy answers to the bundled calibration prompts (``calibration/responses/
host_answers.jsonl``: compliant answers to harmful prompts are label 1; its refusals and its answers to harmless
prompts, look-alikes on sensitive topics included, are label 0) plus response texts this project wrote
(``calibration/responses/written.jsonl``: refusals and safe redirections of harmful prompts, label 0). See
``calibration/RESPONSE_SETS.md`` for how they were made.

Every answer is read in one forward pass over prompt + answer (:func:`latent_guardrail.answers.read_answer_states`,
the prompt rendered as the guard renders it, not normalised: the states the host computes when it writes that
answer, and the prompt's state at t_inst from the same pass); the scorer is fitted by
:func:`latent_guardrail.response.fit_response` with leave-one-family-out CV (a
family is the prompt's topic, so a whole topic — its compliant answers, refusals and harmless look-alikes — is
held out at once). :func:`add_response` returns the fitted guard with the response scorer attached; the input
scorer is left as it is, so a guard's input part can be rebuilt without regenerating answers.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import numpy as np

from .answers import AnswerEncoding, encode_answer, read_answer_states
from .decoding import pad_token_id
from .errors import CalibrationError, DatasetError
from .fitted import FittedGuard
from .hosts import Host
from .positions import encode_prompt
from .response import ResponseOptions, fit_response

__all__ = ["RISK_FAMILIES", "ResponsePair", "add_response", "bundled_pairs", "read_response_sets", "response_family",
           "response_layers"]

RISK_FAMILIES = frozenset({"weapons", "violence", "cybercrime", "fraud", "drugs", "hate_harassment", "self_harm",
                           "sexual_minors", "privacy", "misinformation", "extremism", "discrimination", "theft"})
"""The bundled sets' risk categories: the cross-validation families of the bundled pairs (with ``general``)."""
_TOPIC_FAMILY = {"weapons_legal": "weapons", "self_harm_support": "self_harm", "fraud_awareness": "fraud",
                 "security_defence": "cybercrime", "security": "cybercrime", "harm_reduction": "drugs"}
WRITTEN_EVERY = 4
"""The bundled fit keeps every 4th written refusal: refusals are the easy side (the compliance read-out separates
them perfectly out of fold); the harm read-out needs the host's own answers."""


@dataclass(frozen=True)
class ResponsePair:
    """One calibration answer: ``label`` 1 = compliance with a harmful request, 0 = any other answer;
    ``group`` its family for cross-validation (the prompt's topic); ``kind`` what it is (``compliant``,
    ``refusal``, ``answer``, ``over_refusal``, ``written_refusal``, ...)."""

    prompt: str
    response: str
    label: int
    group: str
    kind: str = ""


def read_response_sets(root: str | Path | None = None) -> list[ResponsePair]:
    """The calibration pairs under ``root`` (default: the bundled ``calibration/responses``), files in name order.

    Raises:
        DatasetError: no file, or a row without prompt / response / label.
    """
    base: Traversable = (resources.files("latent_guardrail") / "calibration" / "responses" if root is None
                         else Path(root))
    files = sorted((f for f in base.iterdir() if f.name.endswith(".jsonl")), key=lambda f: f.name) \
        if base.is_dir() else []
    if not files:
        raise DatasetError(f"no response calibration sets (*.jsonl) under {base}")
    pairs: list[ResponsePair] = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = int(row["label"])
                prompt, response = str(row["prompt"]), str(row["response"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{file.name}:{number}: a row needs prompt, response and label ({exc})") from exc
            if label not in (0, 1):
                raise DatasetError(f"{file.name}:{number}: label must be 0 or 1, got {label}")
            if not response.strip():
                continue  # an empty answer has no tokens to read
            group = str(row.get("topic") or row.get("category") or file.name)
            pairs.append(ResponsePair(prompt, response, label, group, str(row.get("kind", ""))))
    return pairs


def response_family(topic: str) -> str:
    """The cross-validation family of a bundled pair's topic: its risk category (a look-alike's or a twin's topic
    counts for the category it imitates), else ``general`` — so a whole topic (compliant answers, refusals and
    harmless look-alikes) is held out at once."""
    family = _TOPIC_FAMILY.get(topic, topic)
    return family if family in RISK_FAMILIES else "general"


def bundled_pairs() -> list[ResponsePair]:
    """The bundled pairs as the bundled fit uses them: families by :func:`response_family`, every
    :data:`WRITTEN_EVERY`-th written refusal (the host's own answers all)."""
    out, written = [], 0
    for pair in read_response_sets():
        if pair.kind == "written_refusal":
            written += 1
            if (written - 1) % WRITTEN_EVERY:
                continue
        out.append(dataclasses.replace(pair, group=response_family(pair.group)))
    return out


def response_layers(num_blocks: int) -> tuple[int, ...]:
    """The residual layers a response fit reads: about 15 evenly spaced ones from layer 1 to the last."""
    stride = max(1, round(num_blocks / 15))
    layers = list(range(1, num_blocks + 1, stride))
    if layers[-1] != num_blocks:
        layers.append(num_blocks)
    return tuple(layers)


def encode_pairs(host: Host, fitted: FittedGuard, pairs: Sequence[ResponsePair]) -> list[AnswerEncoding]:
    """Each pair's prompt rendered as the guard renders it (no normalisation) followed by its answer's tokens."""
    limit = fitted.settings.max_tokens or host.max_positions
    out = []
    for pair in pairs:
        prompt = encode_prompt(host.tokenizer, pair.prompt, system_prompt=fitted.settings.system_prompt,
                               max_tokens=limit)
        out.append(encode_answer(host.tokenizer, prompt, pair.response, max_tokens=limit))
    return out


def add_response(host: Host, fitted: FittedGuard, pairs: Sequence[ResponsePair] | None = None, *,
                 options: ResponseOptions | None = None, layers: Sequence[int] | None = None,
                 batch_size: int = 16) -> FittedGuard:
    """``fitted`` with a response scorer fitted on ``pairs`` (default: :func:`bundled_pairs`). The pairs' kinds
    say which label-0 answers are refusals (:data:`latent_guardrail.response.REFUSAL_KINDS`): with both kinds of
    label-0 answer the scorer has two read-outs (compliance and harm, combined by min).

    Raises:
        CalibrationError: too few answers of a label, or a single family.
    """
    chosen = bundled_pairs() if pairs is None else list(pairs)
    if not chosen:
        raise CalibrationError("no calibration answers to fit the response scorer on")
    start = time.perf_counter()
    read = tuple(layers) if layers is not None else response_layers(fitted.num_blocks)
    opts = options if options is not None else ResponseOptions()
    answers = encode_pairs(host, fitted, chosen)
    with host.lock:
        states = read_answer_states(host.model, answers, read, pad_token_id=pad_token_id(host.tokenizer),
                                    every=opts.every, views=opts.views, batch_size=batch_size,
                                    layer_template=fitted.layer_template)
    read_s = time.perf_counter() - start
    labels = np.array([pair.label for pair in chosen])
    groups = np.array([pair.group for pair in chosen])
    scorer, report = fit_response(states.views, labels, groups, read, opts, kinds=[pair.kind for pair in chosen],
                                  prompts=states.prompts)
    kinds: dict[str, int] = {}
    for pair in chosen:
        kinds[pair.kind] = kinds.get(pair.kind, 0) + 1
    report.update({"kinds": kinds, "read_s": round(read_s, 1), "fit_s": round(time.perf_counter() - start, 1)})
    return dataclasses.replace(fitted, response=scorer, report={**fitted.report, "response": report})
