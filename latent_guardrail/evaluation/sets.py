"""Labelled evaluation sets: command-line specs, files, the optional Hugging Face source, leakage checks.

An :class:`EvalSet` is a named list of prompt texts with one ground-truth label. A file whose rows carry
their own labels (XSTest's ``label`` column) is read with ``kind="labels"`` and becomes two sets,
``NAME-harmful`` and ``NAME-harmless``, that share a ``group`` so the report can also score the file alone.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..datasets import Label, PromptRecord, read_prompts
from ..errors import DatasetError

__all__ = [
    "EvalSet",
    "LeakageWarning",
    "SetKind",
    "find_leaks",
    "load_set",
    "normalize_text",
    "parse_set_spec",
    "read_hf_records",
    "sets_from_records",
]

SetKind = Literal["harmful", "harmless", "labels"]
_KINDS: tuple[str, ...] = ("harmful", "harmless", "labels")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_SPACE = re.compile(r"\s+")
HF_PREFIX = "hf://"


class LeakageWarning(UserWarning):
    """Evaluation prompts also occur in the calibration data: their scores are optimistic."""


class EvalSet(BaseModel):
    """One labelled evaluation set.

    ``texts``: the prompts (``n``); ``label``: the ground truth of every prompt; ``group``: the name of the
    file-level group when the set is one half of a file with its own labels, else the set's own name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Short name shown in tables and plots.")
    label: Label = Field(description="Ground truth of every prompt of the set.")
    texts: tuple[str, ...] = Field(description="The prompts.")
    source: str | None = Field(default=None, description="Where the prompts came from (path or hf:// id).")
    group: str | None = Field(default=None, description="File-level group of a labelled file split in two.")
    categories: tuple[str | None, ...] | None = Field(
        default=None, description="True category of each prompt (from the file's category field), or None.")

    @model_validator(mode="after")
    def _categories_fit(self) -> EvalSet:
        if self.categories is not None and len(self.categories) != len(self.texts):
            raise ValueError(f"set {self.name!r}: {len(self.categories)} categories for {len(self.texts)} prompts")
        return self

    @property
    def harmful(self) -> bool:
        """True when the set's prompts are harmful (a detection set)."""
        return self.label == "harmful"


def normalize_text(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed: the key duplicate prompts are compared by."""
    return _SPACE.sub(" ", text).strip().casefold()


def parse_set_spec(spec: str) -> tuple[str, SetKind, str, str | None]:
    """Split ``NAME:harmful|harmless|labels:PATH[:COLUMN]`` into ``(name, kind, path, column)``.

    ``PATH`` may itself contain ``:`` (an existing file wins over a trailing ``:COLUMN``); ``hf://ID`` names a
    Hugging Face dataset (``hf://owner/name[@split]``, optional library).
    """
    example = "e.g. 'xstest:labels:data/xstest_prompts.csv' or 'adv:harmful:harmful_behaviors.csv:goal'"
    parts = spec.split(":", 2) if isinstance(spec, str) else []
    if len(parts) < 3 or not parts[2].strip():
        raise DatasetError(f"Set spec {spec!r} must look like NAME:harmful|harmless|labels:PATH[:COLUMN], {example}.")
    name, kind, rest = parts[0].strip(), parts[1].strip().lower(), parts[2].strip()
    if _NAME.fullmatch(name) is None:
        raise DatasetError(f"Set name {name!r} in {spec!r} may use only letters, digits, '_', '.' and '-'.")
    if kind not in _KINDS:
        raise DatasetError(f"Set kind {kind!r} in {spec!r} must be one of {list(_KINDS)}, {example}.")
    column: str | None = None
    path = rest
    if rest.startswith(HF_PREFIX):
        head, sep, tail = rest[len(HF_PREFIX):].rpartition(":")
        if sep and head and "/" not in tail:
            path, column = HF_PREFIX + head, tail
    elif not Path(rest).exists() and ":" in rest:
        head, _, tail = rest.rpartition(":")
        if head and tail and "/" not in tail and "\\" not in tail:
            path, column = head, tail
    return name, kind, path, (column.strip() or None) if column is not None else None  # type: ignore[return-value]


def read_hf_records(dataset_id: str, *, text_column: str | None = None, split: str = "train",
                    limit: int | None = None) -> list[PromptRecord]:
    """Prompts of a Hugging Face dataset (needs ``pip install datasets`` and network access; lazy import).

    ``dataset_id`` is ``owner/name`` optionally followed by ``@split``. Rows are read like a JSON file's rows
    (text, label and category keys detected the same way).
    """
    try:
        import datasets as hf_datasets  # type: ignore[import-not-found, unused-ignore]
    except ImportError as error:
        raise DatasetError(
            f"Reading {HF_PREFIX}{dataset_id} needs the Hugging Face datasets library: pip install datasets "
            "(or download the file and pass its path)."
        ) from error
    repo, _, chosen = dataset_id.partition("@")
    try:
        table = hf_datasets.load_dataset(repo, split=chosen or split)
    except Exception as error:  # network, missing dataset, bad split: all reported the same way
        raise DatasetError(f"Could not load {HF_PREFIX}{dataset_id}: {error}") from error
    rows: list[Mapping[str, Any]] = list(table)[:limit] if limit is not None else list(table)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{repo.replace('/', '_')}.jsonl"
        file.write_text("\n".join(json.dumps(dict(r), default=str, ensure_ascii=False) for r in rows),
                        encoding="utf-8")
        return read_prompts(file, text_column=text_column)


def sets_from_records(name: str, kind: SetKind, records: Sequence[PromptRecord], source: str | None = None
                      ) -> list[EvalSet]:
    """One set (``kind`` harmful/harmless) or two (``kind="labels"``: ``NAME-harmful``, ``NAME-harmless``).

    Raises:
        DatasetError: ``labels`` and a row has no label, or the rows contradict ``kind``.
    """
    if kind == "labels":
        missing = [i + 1 for i, r in enumerate(records) if r.label is None]
        if missing:
            raise DatasetError(f"Set {name!r}: {len(missing)} row(s) have no label (first: row {missing[0]}); "
                               "give the file a label column (harmful/harmless or unsafe/safe) or use "
                               f"{name}:harmful:PATH / {name}:harmless:PATH.")
        out = []
        for label in ("harmful", "harmless"):
            rows = [r for r in records if r.label == label]
            if rows:
                out.append(EvalSet(name=f"{name}-{label}", label=label, texts=tuple(r.text for r in rows),
                                   source=source, group=name, categories=_categories(rows)))
        return out
    contradicting = [i + 1 for i, r in enumerate(records) if r.label is not None and r.label != kind]
    if contradicting:
        raise DatasetError(f"Set {name!r} is declared {kind} but {len(contradicting)} row(s) are labelled otherwise "
                           f"(first: row {contradicting[0]}); declare it as {name}:labels:PATH to keep both.")
    return [EvalSet(name=name, label=kind, texts=tuple(r.text for r in records), source=source, group=name,
                    categories=_categories(records))]


def _categories(records: Sequence[PromptRecord]) -> tuple[str | None, ...] | None:
    """The rows' categories, or None when no row names one."""
    found = tuple(r.category for r in records)
    return found if any(c is not None for c in found) else None


def load_set(name: str, kind: SetKind, path: str | Path, *, text_column: str | None = None,
             limit: int | None = None) -> list[EvalSet]:
    """Read one evaluation file (any format :func:`~latent_guardrail.datasets.read_prompts` reads, mixed
    encodings decoded with a warning) or ``hf://owner/name[@split]``.

    Raises:
        DatasetError: missing or empty file, unknown column (the columns are listed), unlabelled rows.
    """
    where = str(path)
    if where.startswith(HF_PREFIX):
        records = read_hf_records(where[len(HF_PREFIX):], text_column=text_column, limit=limit)
    else:
        label = None if kind == "labels" else kind
        records = read_prompts(path, text_column=text_column, limit=limit, decode="fallback")
        if label is not None:
            records = [r if r.label is not None else r.model_copy(update={"label": label}) for r in records]
    return sets_from_records(name, kind, records, source=where)


def find_leaks(calibration: Iterable[str], sets: Sequence[EvalSet], *, warn: bool = True) -> dict[str, int]:
    """Per set, how many of its prompts also occur in ``calibration`` (compared by :func:`normalize_text`).

    With ``warn``, a :class:`LeakageWarning` names the sets and counts (their scores are optimistic).
    """
    seen = {normalize_text(text) for text in calibration}
    leaks = {s.name: sum(normalize_text(t) in seen for t in s.texts) for s in sets}
    leaks = {name: count for name, count in leaks.items() if count}
    if warn and leaks:
        listed = ", ".join(f"{name}: {count}" for name, count in leaks.items())
        warnings.warn(f"leakage: evaluation prompts also used for calibration ({listed}); their scores are "
                      "optimistic. Remove them from the evaluation sets or calibrate on other prompts.",
                      LeakageWarning, stacklevel=2)
    return leaks
