"""Body of the ``latent-guardrail eval`` command (registered in :mod:`latent_guardrail.cli`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..datasets import PromptRecord, read_calibration_sets, read_prompts
from ..errors import DatasetError, InputError, LatentGuardError
from ..guard import DEFAULT_GUARD, LatentGuard
from ..hosts import DEFAULT_MODEL, load_host
from ..settings import SAFETY_SYSTEM_PROMPT
from .cache import ResultCache, calibrate_cached
from .categories import added_fpr_rows, category_rows
from .report import summary_rows, write_report
from .runner import evaluate
from .sets import EvalSet, load_set, parse_set_spec
from .settings import BASELINE_NAMES, EvalSettings

__all__ = ["eval_command", "parse_calibration_sources"]


def parse_calibration_sources(specs: list[str], *, text_column: str | None = None
                              ) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Calibration prompts from ``--calibrate-from`` values.

    Each value is ``bundled`` (the bundled sets), a folder laid out like them (``harmful/*.jsonl``,
    ``harmless/*.jsonl``), or ``harmful:PATH`` / ``harmless:PATH``.
    """
    harmful: list[PromptRecord] = []
    harmless: list[PromptRecord] = []
    for spec in specs:
        kind, sep, rest = spec.partition(":")
        if spec == "bundled":
            h, b = read_calibration_sets()
        elif sep and kind in ("harmful", "harmless") and rest:
            rows = read_prompts(rest, text_column=text_column, label=None, decode="fallback")
            h, b = (rows, []) if kind == "harmful" else ([], rows)
        elif Path(spec).is_dir():
            h, b = read_calibration_sets(Path(spec))
        else:
            raise DatasetError(f"--calibrate-from {spec!r}: use 'bundled', a folder with harmful/ and harmless/ "
                               "JSONL files, or harmful:PATH / harmless:PATH.")
        harmful += h
        harmless += b
    if not harmful or not harmless:
        raise DatasetError("--calibrate-from needs harmful and harmless prompts (e.g. harmful:a.jsonl "
                           "harmless:b.jsonl, or a folder with harmful/ and harmless/).")
    return harmful, harmless


def _baselines(value: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in BASELINE_NAMES]
    if unknown:
        raise InputError(f"unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)} or 'none'")
    return chosen


def eval_command(
    harmful: Annotated[list[Path] | None, typer.Option("--harmful", help="Harmful prompts file; repeatable.")] = None,
    harmless: Annotated[list[Path] | None, typer.Option("--harmless", help="Harmless prompts file; repeatable.")
                        ] = None,
    set_spec: Annotated[list[str] | None, typer.Option(
        "--set", help="NAME:harmful|harmless|labels:PATH[:COLUMN] ('labels' keeps the file's own label column; "
                      "PATH may be hf://owner/name[@split]); repeatable.")] = None,
    guard_dir: Annotated[str, typer.Option("--guard", help="Guard folder, or 'default'.")] = DEFAULT_GUARD,
    model: Annotated[str, typer.Option(help="Host model: 'default', an HF id or folder, a .gguf file.")] = (
        DEFAULT_MODEL),
    calibrate_from: Annotated[list[str] | None, typer.Option(
        "--calibrate-from", help="Fit guards instead of loading one: 'bundled', a folder with harmful/ and "
                                 "harmless/, or harmful:PATH / harmless:PATH; repeatable.")] = None,
    mode: Annotated[str, typer.Option(help="With --calibrate-from: 'paper', 'tuned' or 'both'.")] = "both",
    baselines: Annotated[str, typer.Option(help="Comma-separated baselines: keyword, self_check, perplexity; "
                                                "or 'none'.")] = ",".join(BASELINE_NAMES),
    behaviour_system_prompt: Annotated[str, typer.Option(
        help="System prompt the host answers under for the keyword judge ('none' for none).")] = (
        SAFETY_SYSTEM_PROMPT),
    max_new_tokens: Annotated[int, typer.Option(help="Tokens of the host's answer for the keyword judge.")] = 32,
    text_column: Annotated[str | None, typer.Option(help="Column holding the prompt in CSV files.")] = None,
    limit: Annotated[int | None, typer.Option(help="Read at most this many prompts per file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (for machines).")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write report.md/.html, results.json and PNG "
                                                                "plots into this folder.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Report format: md, html or both.")] = "both",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute everything.")] = False,
) -> None:
    """Evaluate a guard (or guards fitted with --calibrate-from) and same-host baselines on labelled sets."""
    console = Console(stderr=as_json)

    def fail(exc: Exception) -> None:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2)

    try:
        if fmt not in ("md", "html", "both"):
            raise InputError(f"--format must be md, html or both, got {fmt!r}")
        sets: list[EvalSet] = []
        for path in harmful or []:
            sets += load_set(path.stem, "harmful", path, text_column=text_column, limit=limit)
        for path in harmless or []:
            sets += load_set(path.stem, "harmless", path, text_column=text_column, limit=limit)
        for spec in set_spec or []:
            name, kind, path_text, column = parse_set_spec(spec)
            sets += load_set(name, kind, path_text, text_column=column or text_column, limit=limit)
        if not sets:
            raise InputError("no evaluation sets: pass --harmful, --harmless or --set")
        names = [s.name for s in sets]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InputError(f"set names must be unique, got {duplicated} twice; name them with --set NAME:...")
        settings = EvalSettings(
            baselines=_baselines(baselines),  # type: ignore[arg-type]
            max_new_tokens=max_new_tokens, batch_size=batch_size, progress=not as_json,
            behaviour_system_prompt=None if behaviour_system_prompt.strip().lower() == "none"
            else behaviour_system_prompt)
        cache = ResultCache(enabled=not no_cache)
        host = load_host(model)
        guards: dict[str, LatentGuard] = {}
        calibration_texts: list[str] | None = None
        reference: list[str] | None = None
        if calibrate_from:
            cal_h, cal_b = parse_calibration_sources(calibrate_from, text_column=text_column)
            modes = ("paper", "tuned") if mode == "both" else (mode,)
            for chosen in modes:
                if chosen not in ("paper", "tuned"):
                    raise InputError(f"--mode must be paper, tuned or both, got {mode!r}")
                guards[chosen] = calibrate_cached(host, cal_h, cal_b, mode=chosen, cache=cache,  # type: ignore[arg-type]
                                                  progress=not as_json)
            calibration_texts = [r.text for r in cal_h + cal_b]
            reference = [r.text for r in cal_b]
        else:
            guard = LatentGuard.load(guard_dir, host, progress=not as_json)
            guards[guard.mode] = guard
            if guard_dir == DEFAULT_GUARD:
                cal_h, cal_b = read_calibration_sets()
                calibration_texts = [r.text for r in cal_h + cal_b]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate(guards, sets, settings=settings, calibration_texts=calibration_texts,
                              reference_harmless=reference, cache=cache)
        for warning in caught:
            console.print(f"[yellow]warning:[/] {warning.message}")
        written = write_report(result, report, fmt) if report is not None else []  # type: ignore[arg-type]
    except (LatentGuardError, ValueError, OSError) as exc:
        fail(exc)
        return
    if as_json:
        print(json.dumps(json.loads(result.report.model_dump_json())))
        return
    header, rows = summary_rows(result)
    table = Table(title=f"evaluation on {result.report.host} ({result.report.seconds:.0f}s, cache "
                        f"{result.report.cache_hits} hits / {result.report.cache_misses} misses)")
    for column in header:
        table.add_column(column, justify="left" if column == "rule" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for rule in result.report.rules:
        if rule.categories is None:
            continue
        for title, (head, body) in ((f"{rule.name}: detection per category", category_rows(rule.categories)),
                                    (f"{rule.name}: false positives per category on the harmless sets",
                                     added_fpr_rows(rule.categories))):
            if not body:
                continue
            extra = Table(title=title)
            for column in head:
                extra.add_column(column, justify="left" if column in ("category", "harmless set") else "right")
            for row in body:
                extra.add_row(*row)
            console.print(extra)
    for note in result.report.notes:
        console.print(f"[dim]note: {note}[/]")
    if written:
        console.print(f"report written to {report}: " + ", ".join(p.name for p in written))
