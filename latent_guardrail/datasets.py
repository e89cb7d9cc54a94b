"""Labelled prompt sets: read them from disk, load the bundled calibration sets, split them.

:func:`read_prompts` reads ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` and ``.txt`` files and knows the
layouts of the public sets the project uses:

* AdvBench ``harmful_behaviors.csv`` (text column ``goal``),
* XSTest ``xstest_prompts.csv`` (text ``prompt``; ``label`` ``safe``/``unsafe`` -> ``harmless``/``harmful``;
  ``type`` -> category),
* Alpaca JSON/JSONL (``instruction``, joined with a non-empty ``input``),
* JailbreakBench behaviours CSV (``Goal``, ``Category``),
* HarmBench behaviours CSV (``Behavior``, ``SemanticCategory``; a non-empty ``ContextString`` is put before
  the behaviour the way HarmBench builds its contextual prompts).

Columns or keys that are not the text, the category or the label are kept as strings in
:attr:`PromptRecord.meta`.
"""

from __future__ import annotations

import csv
import json
import random
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, field_validator

from latent_guardrail.errors import DatasetError, InputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "Decode",
    "Label",
    "PromptRecord",
    "parse_category_spec",
    "read_calibration_sets",
    "read_prompts",
    "split_records",
]

Label = Literal["harmful", "harmless"]
Decode = Literal["strict", "fallback"]

T = TypeVar("T")

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".tsv", ".txt")

# Candidate names, in priority order, compared case-insensitively. "goal" comes before "behavior" because
# JailbreakBench has both and its "Behavior" column is a short name, not the request.
_TEXT_KEYS: tuple[str, ...] = ("text", "prompt", "goal", "instruction", "question", "behavior")
_CATEGORY_KEYS: tuple[str, ...] = ("category", "semanticcategory", "type")
_LABEL_KEY = "label"
_INPUT_KEY = "input"  # Alpaca: joined to "instruction"
_CONTEXT_KEY = "contextstring"  # HarmBench: put before "behavior"

_LABEL_VALUES: dict[str, Label] = {
    "harmful": "harmful",
    "unsafe": "harmful",
    "harmless": "harmless",
    "safe": "harmless",
    "benign": "harmless",
}

_CATEGORY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class PromptRecord(BaseModel, frozen=True, extra="forbid"):
    """One prompt with what is known about it.

    ``label`` is ``None`` when the file does not say; ``source`` is the file name the prompt was read from;
    ``meta`` holds the row's other columns as strings.
    """

    text: str = Field(min_length=1, description="The user instruction, stripped of surrounding whitespace.")
    category: str | None = Field(default=None, description="Risk category or other grouping name.")
    label: Label | None = Field(default=None, description="Ground truth: harmful or harmless.")
    source: str | None = Field(default=None, description="Name of the file the prompt came from.")
    meta: dict[str, str] = Field(default_factory=dict, description="The row's other columns, as strings.")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must contain a non-whitespace character")
        return value


def read_prompts(
    path: str | Path,
    *,
    text_column: str | None = None,
    label: Label | None = None,
    category: str | None = None,
    limit: int | None = None,
    decode: Decode = "strict",
) -> list[PromptRecord]:
    """Read the prompts of one file, chosen by its extension.

    ``text_column`` names the column/key holding the prompt; by default the first of ``text``, ``prompt``,
    ``goal``, ``instruction``, ``question``, ``behavior`` present is used (case-insensitive).
    ``label`` is given to every row that does not carry its own label; a row whose own label disagrees raises
    :class:`DatasetError`. ``category``, when given, replaces the rows' own category (kept in
    ``meta["file_category"]``). ``limit`` keeps the first ``limit`` prompts. Rows with empty text are
    skipped with a warning that counts them. ``decode="fallback"`` reads files of mixed encodings: lines that
    are not valid UTF-8 are decoded as Windows-1252 (else Latin-1) with a warning that counts them;
    ``"strict"`` (the default) raises :class:`DatasetError` on any non-UTF-8 byte.
    """
    file = Path(path)
    if decode not in ("strict", "fallback"):
        raise InputError(f"decode must be 'strict' or 'fallback', got {decode!r}.")
    if text_column is not None and not text_column.strip():
        raise InputError("text_column must be a non-empty column name, or None to auto-detect it.")
    _check_label_argument(label)
    if category is not None and not category.strip():
        raise InputError("category must be a non-empty name, or None to keep each row's own category.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer or None, got {limit!r}.")
    content = _read_text(file, decode)
    return _parse(
        content,
        name=file.name,
        where=str(file),
        text_column=text_column,
        label=label,
        category=category,
        limit=limit,
    )


def read_calibration_sets(root: Path | None = None) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Return ``(harmful, harmless)``: the bundled calibration prompts.

    ``root`` holds ``harmful/*.jsonl`` and ``harmless/*.jsonl``; by default it is the ``calibration`` folder
    shipped inside the package. Files are read in name order; each row keeps its own category.
    """
    base: Traversable = resources.files("latent_guardrail") / "calibration" if root is None else Path(root)
    harmful = _read_calibration_folder(base, "harmful")
    harmless = _read_calibration_folder(base, "harmless")
    return harmful, harmless


def split_records(records: Sequence[T], n_first: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """Shuffle ``records`` with ``seed`` and split them into the first ``n_first`` and the rest.

    The same records and seed always give the same split; ``records`` itself is not changed.
    """
    if isinstance(n_first, bool) or not isinstance(n_first, int):
        raise InputError(f"n_first must be an integer, got {n_first!r}.")
    if n_first < 0 or n_first > len(records):
        raise InputError(
            f"n_first must be between 0 and the number of records ({len(records)}), got {n_first}; "
            "read more prompts or ask for fewer."
        )
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n_first], shuffled[n_first:]


def parse_category_spec(spec: str) -> tuple[str, Path]:
    """Split a command-line ``CATEGORY:PATH`` spec such as ``weapons:data/weapons.jsonl``.

    Only the first ``:`` separates, so paths containing ``:`` are kept whole.
    """
    example = "e.g. 'weapons:data/weapons.jsonl'"
    if not isinstance(spec, str) or ":" not in spec:
        raise DatasetError(f"Category spec {spec!r} must look like CATEGORY:PATH, {example}.")
    name, _, raw_path = spec.partition(":")
    name = name.strip()
    raw_path = raw_path.strip()
    if not name:
        raise DatasetError(f"Category spec {spec!r} has no category name before ':', {example}.")
    if _CATEGORY_PATTERN.fullmatch(name) is None:
        raise DatasetError(
            f"Category name {name!r} in spec {spec!r} may use only letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit, {example}."
        )
    if not raw_path:
        raise DatasetError(f"Category spec {spec!r} has no file path after ':', {example}.")
    return name, Path(raw_path)


# --- reading ----------------------------------------------------------------------------------------------


def _check_label_argument(label: object) -> None:
    if label is not None and label not in ("harmful", "harmless"):
        raise InputError(f"label must be 'harmful', 'harmless' or None, got {label!r}.")


def _read_text(file: Path, decode: Decode = "strict") -> str:
    if not file.exists():
        raise DatasetError(f"Prompt file {file} does not exist; check the path (relative to {Path.cwd()}).")
    if not file.is_file():
        raise DatasetError(f"Prompt path {file} is not a file; pass a {_supported()} file.")
    if file.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise DatasetError(
            f"Prompt file {file} has unsupported extension {file.suffix or '(none)'!r}; "
            f"supported: {_supported()}. Rename or convert the file."
        )
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        if decode == "strict":
            raise DatasetError(
                f"Prompt file {file} is not UTF-8 text ({error}); re-save it as UTF-8, or read it with "
                "decode='fallback' to decode the lines that are not UTF-8 as Windows-1252."
            ) from error
    return _decode_mixed(file)


def _decode_mixed(file: Path) -> str:
    """Decode ``file`` line by line: UTF-8 where valid, else Windows-1252, else Latin-1 (never fails)."""
    lines: list[str] = []
    fallback: list[int] = []
    for number, raw in enumerate(file.read_bytes().split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
        except UnicodeDecodeError:
            fallback.append(number)
            try:
                lines.append(raw.decode("cp1252"))
            except UnicodeDecodeError:
                lines.append(raw.decode("latin-1"))
    shown = ", ".join(str(n) for n in fallback[:10]) + (", ..." if len(fallback) > 10 else "")
    warnings.warn(
        f"{file} mixes encodings: decoded {len(fallback)} line(s) that are not UTF-8 as Windows-1252 "
        f"(lines {shown}); re-save the file as UTF-8 to silence this.",
        UserWarning,
        stacklevel=4,
    )
    return "\n".join(lines)


def _supported() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS)


def _parse(
    content: str,
    *,
    name: str,
    where: str,
    text_column: str | None,
    label: Label | None,
    category: str | None,
    limit: int | None,
) -> list[PromptRecord]:
    if not content.strip():
        raise DatasetError(f"Prompt file {where} is empty; it needs at least one prompt.")
    suffix = Path(name).suffix.lower()
    rows: list[tuple[int, Mapping[str, Any] | str]]
    if suffix == ".txt":
        rows = [(number, line) for number, line in enumerate(content.splitlines(), start=1) if line.strip()]
    elif suffix == ".jsonl":
        rows = _jsonl_rows(content, where)
    elif suffix == ".json":
        rows = _json_rows(content, where)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(content, where, delimiter="\t" if suffix == ".tsv" else ",", text_column=text_column)
    else:
        raise DatasetError(
            f"Prompt file {where} has unsupported extension {suffix!r}; supported: {_supported()}."
        )
    if not rows:
        raise DatasetError(f"Prompt file {where} has no rows; it needs at least one prompt.")

    records: list[PromptRecord] = []
    skipped: list[int] = []
    for number, row in rows:
        record = _to_record(
            row,
            number=number,
            name=name,
            where=where,
            text_column=text_column,
            label=label,
            category=category,
        )
        if record is None:
            skipped.append(number)
        else:
            records.append(record)
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"Skipped {len(skipped)} row(s) with empty text in {where} (rows {shown}).",
            UserWarning,
            stacklevel=3,
        )
    if not records:
        raise DatasetError(f"Prompt file {where} has no row with non-empty text; fill in the prompts.")
    return records if limit is None else records[:limit]


def _jsonl_rows(content: str, where: str) -> list[tuple[int, Mapping[str, Any] | str]]:
    rows: list[tuple[int, Mapping[str, Any] | str]] = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(
                f"Line {number} of {where} is not valid JSON ({error.msg}); "
                "each line must be one JSON object."
            ) from error
        rows.append((number, _check_item(value, number, where, "Line")))
    return rows


def _json_rows(content: str, where: str) -> list[tuple[int, Mapping[str, Any] | str]]:
    try:
        value = json.loads(content)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno}); fix it, or use one object per "
            "line in a .jsonl file."
        ) from error
    if not isinstance(value, list):
        kind = f"an object with keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
        raise DatasetError(f"{where} must hold a JSON list of objects or strings, got {kind}.")
    return [(index, _check_item(item, index, where, "Item")) for index, item in enumerate(value, start=1)]


def _check_item(value: object, number: int, where: str, unit: str) -> Mapping[str, Any] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value
    raise DatasetError(
        f"{unit} {number} of {where} is a JSON {type(value).__name__}; expected an object with a text key "
        "or a string."
    )


def _csv_rows(
    content: str, where: str, *, delimiter: str, text_column: str | None
) -> list[tuple[int, Mapping[str, Any] | str]]:
    reader = csv.DictReader(content.splitlines(), delimiter=delimiter)
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    if not columns:
        raise DatasetError(f"{where} has no header row; the first line must name the columns.")
    if text_column is not None:
        if _find_key(columns, text_column) is None:
            raise DatasetError(
                f"{where} has no column {text_column!r}; its columns are {columns}. "
                "Pass text_column= one of them."
            )
    elif _detect_text_key(columns) is None:
        raise DatasetError(
            f"{where} has no prompt column (looked for {list(_TEXT_KEYS)}); its columns are {columns}. "
            "Pass text_column= the column that holds the prompts."
        )
    # Data rows are numbered from 1, header excluded.
    return [
        (number, {k: v for k, v in row.items() if k is not None})
        for number, row in enumerate(reader, start=1)
    ]


# --- one row ----------------------------------------------------------------------------------------------


def _find_key(keys: Iterable[str], wanted: str) -> str | None:
    keys = list(keys)
    if wanted in keys:
        return wanted
    folded = wanted.strip().casefold()
    for key in keys:
        if key.strip().casefold() == folded:
            return key
    return None


def _detect_text_key(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for candidate in _TEXT_KEYS:
        found = _find_key(keys, candidate)
        if found is not None:
            return found
    return None


def _as_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _to_record(
    row: Mapping[str, Any] | str,
    *,
    number: int,
    name: str,
    where: str,
    text_column: str | None,
    label: Label | None,
    category: str | None,
) -> PromptRecord | None:
    if isinstance(row, str):
        text = row.strip()
        if not text:
            return None
        return PromptRecord(text=text, category=category, label=label, source=name)

    keys = list(row)
    text_key = _find_key(keys, text_column) if text_column is not None else _detect_text_key(keys)
    if text_key is None:
        wanted = repr(text_column) if text_column is not None else f"one of {list(_TEXT_KEYS)}"
        raise DatasetError(
            f"Row {number} of {where} has no text key {wanted}; its keys are {keys}. "
            "Pass text_column= the key that holds the prompt."
        )
    raw_text = row[text_key]
    if raw_text is not None and not isinstance(raw_text, str):
        raise DatasetError(
            f"Row {number} of {where}: {text_key!r} is a {type(raw_text).__name__}, expected a string."
        )
    text = (raw_text or "").strip()
    used = {text_key}

    folded_text_key = text_key.strip().casefold()
    if folded_text_key == "instruction":
        input_key = _find_key(keys, _INPUT_KEY)
        if input_key is not None:
            used.add(input_key)
            extra = (_as_str(row[input_key]) or "").strip()
            if text and extra:
                text = f"{text}\n\n{extra}"
    elif folded_text_key == "behavior":
        context_key = _find_key(keys, _CONTEXT_KEY)
        if context_key is not None:
            used.add(context_key)
            context = (_as_str(row[context_key]) or "").strip()
            if text and context:
                text = f"{context}\n\n---\n\n{text}"
    if not text:
        return None

    row_label: Label | None = None
    label_key = _find_key(keys, _LABEL_KEY)
    if label_key is not None:
        used.add(label_key)
        row_label = _parse_label(row[label_key], number=number, where=where)
    if row_label is None:
        row_label = label
    elif label is not None and row_label != label:
        raise DatasetError(
            f"Row {number} of {where} is labelled {row_label!r} but label={label!r} was given; "
            "drop label= to keep the file's own labels, or filter the records by label after reading."
        )

    meta: dict[str, str] = {}
    row_category: str | None = None
    for candidate in _CATEGORY_KEYS:
        category_key = _find_key(keys, candidate)
        if category_key is not None and category_key not in used:
            used.add(category_key)
            row_category = (_as_str(row[category_key]) or "").strip() or None
            break
    if category is not None:
        if row_category is not None and row_category != category:
            meta["file_category"] = row_category
        row_category = category

    for key in keys:
        if key in used:
            continue
        value = _as_str(row[key])
        if value is not None and value != "":
            meta[key] = value
    return PromptRecord(text=text, category=row_category, label=row_label, source=name, meta=meta)


def _parse_label(value: object, *, number: int, where: str) -> Label | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DatasetError(
            f"Row {number} of {where} has label {value!r}; use one of {sorted(_LABEL_VALUES)} as a string."
        )
    folded = value.strip().casefold()
    if not folded:
        return None
    if folded not in _LABEL_VALUES:
        raise DatasetError(
            f"Row {number} of {where} has label {value!r}; use one of {sorted(_LABEL_VALUES)} "
            "(or rename the column if it is not a harmful/harmless label)."
        )
    return _LABEL_VALUES[folded]


# --- bundled calibration sets -----------------------------------------------------------------------------


def _read_calibration_folder(base: Traversable, kind: Label) -> list[PromptRecord]:
    folder = base / kind
    if not folder.is_dir():
        raise DatasetError(
            f"Calibration folder {folder} is missing; it must hold {kind}/*.jsonl files "
            "(reinstall latent-guardrail, or pass root= a folder laid out that way)."
        )
    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and f.name.endswith(".jsonl")), key=lambda f: f.name
    )
    if not files:
        raise DatasetError(f"Calibration folder {folder} has no .jsonl files; add {kind} prompts there.")
    records: list[PromptRecord] = []
    for file in files:
        try:
            content = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise DatasetError(f"Calibration file {file} is not UTF-8 text ({error}).") from error
        records.extend(
            _parse(
                content,
                name=file.name,
                where=str(file),
                text_column=None,
                label=kind,
                category=None,
                limit=None,
            )
        )
    return records
