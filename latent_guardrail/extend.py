"""Extend a fitted pooled guard with new categories (or drop some) without reading the base prompts again.

:func:`extend_fitted` refits a pooled guard on the union of its base calibration items and the items built from
new rows, exactly as a full fit of that union would at the base's layer window: every direction, the Platt
calibration, the threshold (leave-one-family-out, at ``recipe.target_fpr``), the shrinkage and the pooling are
refitted; only the layer window is kept (a full fit also searches it over every layer). What makes it fast is
that the base items' clause-end states come from the :class:`~latent_guardrail.state_cache.StateCache`, and only
the base's window of layers is read and cached; the first extension on a host fills the cache.

A new category is a category like any other — harmful (``bioweapons``) or topical (``legal_advice``,
``competitor_products``): its rows join the blocked class (each item's clause end that closes the request is a
positive end, as for the bundled categories), it gets its own direction against every harmless end, and — so
that it blocks on its own score even where the overall score stays below the threshold — its own threshold
(``GuardSettings.category_thresholds``; the ``category_threshold:NAME`` rule of
:class:`~latent_guardrail.policy.CategoryPolicy`), set where the category flags ``category_fpr`` of the
held-out harmless items (group 5-fold cross-validation, never below log-odds 0). The rows of a removed category
leave the calibration data (they are not relabelled harmless).

The result's ``report["extension"]`` records what was added (the texts), removed and which base was used, so
an extended guard can be extended again; ``report["categories"]`` holds each category's counts and its
cross-validated detection (:class:`CategoryStats`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .augment import CalibrationItem, build_items
from .centroids import _platt
from .datasets import PromptRecord
from .errors import CalibrationError, InputError
from .fitted import FittedGuard
from .hosts import Host
from .layers import decoder_blocks
from .metrics import auroc, threshold_at_fpr
from .normalize import normalize_for
from .pooled import POOLINGS, EndLabels, PooledOptions, PooledScorer, _pooled_scores, item_rows, shrinkage_lda
from .positions import Prompt, PromptEncoding, encode_batch
from .scorers import scorer_from_artifact
from .settings import CalibrationSettings, GuardSettings
from .state_cache import StateCache, cached_end_states, encoding_identity, state_key
from .views import MAX_CLAUSE_ENDS

__all__ = ["CategoryStats", "Extension", "base_items", "extend_fitted", "fit_window", "plan_extension", "state_keys",
           "DEFAULT_CATEGORY_FPR", "MIN_CATEGORY_ROWS"]

logger = logging.getLogger(__name__)

DEFAULT_CATEGORY_FPR = 0.02
"""Share of held-out harmless items a new category's own threshold lets it flag."""
MIN_CATEGORY_ROWS = 5
"""Fewest prompts a new category needs."""
_F64 = torch.float64
_FOLDS = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Extension:
    """What an extended guard was extended with (stored as ``report["extension"]``).

    Attributes:
        base: ``"default"`` (the bundled sets, every ``every``-th row) or ``"given"`` (rows passed in code).
        every: the base's row step.
        added: category → its added prompts.
        harmless: added harmless prompts.
        removed: categories whose rows left the calibration data.
    """

    base: str
    every: int
    added: dict[str, list[Prompt]]
    harmless: list[Prompt]
    removed: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> Extension | None:
        """The extension recorded in a guard's report (None for a guard fitted from scratch)."""
        found = report.get("extension")
        if not isinstance(found, Mapping):
            return None
        return cls(base=str(found.get("base", "default")), every=int(found.get("every", 1)),
                   added={str(k): list(v) for k, v in dict(found.get("added", {})).items()},
                   harmless=list(found.get("harmless", [])), removed=[str(x) for x in found.get("removed", [])])


@dataclass(frozen=True)
class CategoryStats:
    """One category of a fitted guard, with cross-validated detection.

    Attributes:
        items: its calibration items (plain and wrapped); ``prompts``: the plain ones.
        overall_detected: share of its items the overall rule flags in leave-one-family-out cross-validation.
        own_threshold: its own threshold (new categories), else None.
        own_detected: share of its items its own score flags at ``own_threshold`` (group 5-fold CV).
        own_harmless_flagged: share of harmless items its own score flags there (what it adds to the FPR at most).
        detected: share of its items blocked by either rule (cross-validated).
        added: the category came with the extension.
    """

    prompts: int
    items: int
    overall_detected: float
    detected: float
    own_threshold: float | None = None
    own_detected: float | None = None
    own_harmless_flagged: float | None = None
    added: bool = False


# ----------------------------------------------------------------------------------------------- items

def base_items(harmful: Sequence[PromptRecord | Prompt], harmless: Sequence[PromptRecord | Prompt],
               recipe: CalibrationSettings) -> list[CalibrationItem]:
    """The calibration items a pooled fit of ``harmful``/``harmless`` with ``recipe`` reads (what
    :func:`latent_guardrail.calibration.calibrate` builds: the rows as given plus ``recipe.augment`` wrapped
    copies, families drawn with ``recipe.seed``)."""
    def parts(row: PromptRecord | Prompt) -> tuple[Prompt, str | None, str | None]:
        if isinstance(row, PromptRecord):
            return row.text, row.category, row.source
        return row, None, None

    bad = [row for row in harmful if not isinstance(row, PromptRecord) and not isinstance(row, str | list)]
    if bad:
        raise InputError(f"calibration rows must be strings, message lists or PromptRecords, got "
                         f"{type(bad[0]).__name__}")
    h = [parts(row) for row in harmful]
    b = [(p[0], p[2]) for p in (parts(row) for row in harmless)]
    return build_items(h, b, wrapped_per_item=recipe.augment, seed=recipe.seed)


def _prompt_of(row: PromptRecord | Prompt, what: str) -> Prompt:
    if isinstance(row, PromptRecord):
        return row.text
    if isinstance(row, str):
        if not row.strip():
            raise InputError(f"{what}: an empty prompt")
        return row
    if isinstance(row, list) and all(isinstance(m, Mapping) for m in row):
        return [dict(m) for m in row]
    raise InputError(f"{what}: prompts are strings, message lists or PromptRecords, got {type(row).__name__}")


def plan_extension(fitted: FittedGuard, categories: Mapping[str, Sequence[PromptRecord | Prompt]] | None, *,
                   harmless: Sequence[PromptRecord | Prompt] = (), remove: Sequence[str] = (),
                   base: tuple[Sequence[PromptRecord], Sequence[PromptRecord]] | None = None,
                   default_rows: tuple[Sequence[PromptRecord], Sequence[PromptRecord]] | None = None,
                   every: int | None = None, recipe: CalibrationSettings
                   ) -> tuple[list[CalibrationItem], list[str], Extension]:
    """The items an extension of ``fitted`` fits, the categories that get thresholds of their own (added ones the
    base rows do not have, this extension's and earlier ones'), and its record.

    The base rows are ``base`` when given, else the guard's recorded base, else ``default_rows`` (the bundled
    sets) every ``every``-th row; what an earlier extension added (and removed) is kept; ``categories`` add
    rows (a name the guard has gets more rows; a new name is a new category), ``remove`` drops categories.

    Raises:
        InputError: an unknown category to remove, a bad name, too few rows, or a recorded base that was given
            in code and is not given again.
    """
    record = Extension.from_report(fitted.report)
    if every is not None and every < 1:
        raise InputError(f"every must be at least 1, got {every}")
    if base is None:
        if record is not None and record.base == "given":
            raise InputError("this guard was extended from base rows given in code; pass them again as base=("
                             "harmful, harmless)")
        if default_rows is None:
            raise InputError("no base rows: pass base=(harmful, harmless), the rows the guard was fitted on")
        step = every if every is not None else (record.every if record is not None else 1)
        kind, rows_h, rows_b = "default", list(default_rows[0])[::step], list(default_rows[1])[::step]
    else:
        step, kind, rows_h, rows_b = 1, "given", list(base[0]), list(base[1])
    added: dict[str, list[Prompt]] = dict(record.added) if record is not None else {}
    extra_harmless = list(record.harmless) if record is not None else []
    removed = list(record.removed) if record is not None else []
    base_names = {row.category for row in rows_h if isinstance(row, PromptRecord) and row.category}
    for name in remove:
        if name not in fitted.scorer.categories and name not in added:
            raise InputError(f"cannot remove category {name!r}: this guard has "
                             f"{', '.join(fitted.scorer.categories) or 'no categories'}")
        added.pop(name, None)
        if name in base_names and name not in removed:
            removed.append(name)
    for name, rows in (categories or {}).items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError(f"a category name is letters, digits, '_', '.', '-', got {name!r}")
        if name in remove:
            raise InputError(f"category {name!r} is both added and removed")
        prompts = [_prompt_of(row, f"category {name!r}") for row in rows]
        if len(prompts) < MIN_CATEGORY_ROWS:
            raise InputError(f"category {name!r} needs at least {MIN_CATEGORY_ROWS} prompts, got {len(prompts)}")
        added[name] = prompts
        if name in removed:
            removed.remove(name)
    extra_harmless += [_prompt_of(row, "harmless") for row in harmless]
    items = [item for item in base_items(rows_h, rows_b, recipe) if not (item.harmful and item.category in removed)]
    new_rows: list[tuple[Prompt, str | None, str | None]] = [
        (text, name, None) for name, texts in added.items() for text in texts]
    if new_rows or extra_harmless:
        items += build_items(new_rows, [(text, None) for text in extra_harmless], wrapped_per_item=recipe.augment,
                             seed=recipe.seed)
    extension = Extension(base=kind, every=step, added=added, harmless=extra_harmless, removed=removed)
    return items, sorted(name for name in added if name not in base_names), extension


# ----------------------------------------------------------------------------------------------- fitting

@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads inside the block; None leaves them."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class _FoldSums:
    """One class's rows split into parts (groups or folds): counts ``(P,)``, sums ``(P, L, d)`` and raw scatter
    ``(P, L, d, d)`` per part and layer, with their totals (float64)."""

    count: np.ndarray
    sums: torch.Tensor
    scatter: torch.Tensor

    @classmethod
    def of_rows(cls, x: torch.Tensor, part: np.ndarray, parts: int) -> _FoldSums:
        """The sums of rows ``x`` ``(n, L, d)`` whose part is ``part`` ``(n,)`` (``parts`` parts)."""
        layers, d = x.shape[1], x.shape[2]
        count = np.bincount(part, minlength=parts).astype(float)
        sums = torch.zeros(parts, layers, d, dtype=_F64)
        scatter = torch.zeros(parts, layers, d, d, dtype=_F64)
        for p in range(parts):
            rows = x[torch.from_numpy(part == p)]
            if rows.shape[0]:
                sums[p] = rows.sum(0)
                scatter[p] = torch.matmul(rows.transpose(0, 1).transpose(1, 2), rows.transpose(0, 1))
        return cls(count, sums, scatter)

    @functools.cached_property
    def totals(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Count, sums ``(L, d)`` and scatter ``(L, d, d)`` of every row."""
        return float(self.count.sum()), self.sums.sum(0), self.scatter.sum(0)

    def without(self, part: int | None, layer: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Count, sums ``(d,)`` and scatter ``(d, d)`` (a new tensor) at ``layer`` of every row outside ``part``."""
        count, sums, scatter = self.totals
        if part is None:
            return count, sums[layer], scatter[layer].clone()
        return count - float(self.count[part]), sums[layer] - self.sums[part, layer], \
            scatter[layer] - self.scatter[part, layer]


def _two(negative: tuple[float, torch.Tensor, torch.Tensor], positive: tuple[float, torch.Tensor, torch.Tensor]
         ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Counts ``(2,)``, sums ``(2, d)`` and the summed scatter ``(d, d)`` of class 0 and class 1."""
    return (np.array([negative[0], positive[0]]), torch.stack([negative[1], positive[1]]),
            negative[2].add_(positive[2]))


def fit_window(states: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray,
               layers: Sequence[int], options: PooledOptions) -> tuple[PooledScorer, np.ndarray, dict[str, Any]]:
    """The pooled rule on every layer of ``states`` ``(R, len(layers), d)`` (one window), as
    :func:`latent_guardrail.pooled.fit_pooled` fits it when its window is those layers (same shrinkage and pooling
    candidates, leave-one-group-out AUROC, Platt, threshold), without categories.

    Returns:
        (scorer, out-of-fold calibrated prompt scores ``(n_prompts,)``, report with fit_pooled's keys).
    """
    scorer, logit, report, _ = _fit_window(states.to(_F64), ends, labels, groups, layers, options, _FOLDS)
    return scorer, logit, report


def _fit_window(x: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray, layers: Sequence[int],
                options: PooledOptions, folds: int
                ) -> tuple[PooledScorer, np.ndarray, dict[str, Any], _FoldSums]:
    """:func:`fit_window` on float64 states ``x`` ``(R, L, d)``; also returns the harmless rows' sums per fold of
    :func:`_fold_of` (what the categories' fits start from).

    The rows are sorted once by group and label, so each group's and class's rows are one slice: the per-group
    sums, the held-out scores and the per-fold sums come from those slices without masking all rows.
    """
    n_prompts = labels.shape[0]
    if min((labels == 1).sum(), (labels == 0).sum()) < 4:
        raise CalibrationError("the pooled rule needs at least 4 harmful and 4 harmless prompts")
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    group_fold = np.zeros(n_groups, dtype=int)
    group_fold[group_index] = _fold_of(groups, folds)
    row_group = group_index[ends.prompt]
    order = np.lexsort((ends.label, row_group))                    # by group, then label -1, 0, 1
    bounds = np.searchsorted(row_group[order] * 3 + ends.label[order] + 1, np.arange(3 * n_groups + 1))
    index = torch.from_numpy(order)
    gammas = list(options.shrinkage)
    d = x.shape[2]
    oof = np.zeros((len(gammas), ends.prompt.shape[0], len(layers)))
    finals = []
    negative = _FoldSums(np.zeros(folds), torch.zeros(folds, len(layers), d, dtype=_F64),
                         torch.zeros(folds, len(layers), d, d, dtype=_F64))
    for j in range(len(layers)):
        xs = x[index, j]                                            # (R, d), sorted rows
        count = np.zeros((n_groups, 2))
        sums = torch.zeros(n_groups, 2, d, dtype=_F64)
        scatter = torch.zeros(n_groups, d, d, dtype=_F64)           # both classes
        for g in range(n_groups):
            for c in (0, 1):
                lo, hi = int(bounds[3 * g + c + 1]), int(bounds[3 * g + c + 2])
                if hi == lo:
                    continue
                rows = xs[lo:hi]
                count[g, c] = hi - lo
                sums[g, c] = rows.sum(0)
                part = rows.T @ rows
                scatter[g] += part
                if c == 0:
                    negative.sums[group_fold[g], j] += sums[g, 0]
                    negative.scatter[group_fold[g], j] += part
        total_count, total_sums, total_scatter = count.sum(0), sums.sum(0), scatter.sum(0)
        for g in range(n_groups):
            lo, hi = int(bounds[3 * g]), int(bounds[3 * g + 3])
            if hi == lo:
                continue
            w, mid = shrinkage_lda(total_count - count[g], total_sums - sums[g], total_scatter - scatter[g], gammas)
            z = xs[lo:hi] @ w.T - mid @ w.T                          # (rows, k)
            oof[:, order[lo:hi], j] = z.T.numpy()
        finals.append(shrinkage_lda(total_count, total_sums.clone(), total_scatter.clone(), gammas))
        if j == 0:
            np.add.at(negative.count, group_fold, count[:, 0])
    best: tuple[float, int, str, np.ndarray] | None = None
    candidates: list[dict[str, Any]] = []
    for k, gamma in enumerate(gammas):
        rows = oof[k].mean(axis=1)
        for option in options.poolings:
            scores = _pooled_scores(rows, ends.prompt, ends.last, n_prompts, option)
            value = auroc(scores[labels == 1], scores[labels == 0]) or 0.5
            candidates.append({"shrinkage": gamma, "layers": list(layers), "pooling": option, "auroc": value})
            if best is None or value > best[0] + 1e-4:
                best = (value, k, option, scores)
    assert best is not None
    cv_auc, k, pooling, oof_scores = best
    a, b = _platt(oof_scores, labels.astype(float))
    logit = a * oof_scores + b
    threshold = 0.0 if options.target_fpr is None else max(0.0, threshold_at_fpr(logit[labels == 0],
                                                                                 options.target_fpr))
    dirs = torch.stack([finals[j][0][k] for j in range(len(layers))])
    mids = torch.stack([finals[j][1] for j in range(len(layers))])
    scorer = PooledScorer(list(layers), dirs, mids, (a, b), threshold, pooling=pooling, shrinkage=gammas[k])
    by_group = {}
    for g in np.unique(groups):
        mask = groups == g
        by_group[str(g)] = {"n": int(mask.sum()), "harmful": int((labels[mask] == 1).sum()),
                            "flagged": float((logit[mask] >= threshold).mean())}
    report = {"cv": "leave-one-group-out", "groups": n_groups, "cv_auroc": cv_auc, "shrinkage": gammas[k],
              "pooling": pooling, "layers": list(layers),
              "candidates_top": sorted(candidates, key=lambda c: -float(c["auroc"]))[:10],
              "heldout_detect_rate": float((logit[labels == 1] >= threshold).mean()),
              "heldout_pass_rate": float((logit[labels == 0] < threshold).mean()), "heldout_by_group": by_group}
    return scorer, logit, report, negative


def _z(states: torch.Tensor, directions: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ``(h − m) · w`` for rows ``(R, layers, d)``: ``(R,)`` (one matrix-vector product over the
    rows, no ``(R, layers, d)`` temporary)."""
    flat = states.to(_F64).reshape(states.shape[0], -1)
    return (flat @ directions.reshape(-1) - (midpoints * directions).sum()) / directions.shape[0]


def _fold_of(groups: np.ndarray, folds: int) -> np.ndarray:
    """Each group (family) assigned to one of ``folds`` folds, round robin over the sorted group names."""
    names = sorted(set(groups.tolist()))
    index = {name: i % folds for i, name in enumerate(names)}
    return np.array([index[g] for g in groups.tolist()])


# ----------------------------------------------------------------------------------------------- extension

def _judged(items: Sequence[CalibrationItem], guard: GuardSettings) -> list[Prompt]:
    """The items' prompts as the guard judges them (normalised as calibration does)."""
    return [normalize_for(item.prompt, guard)[0] for item in items]


def state_keys(base: FittedGuard, items: Sequence[CalibrationItem]) -> list[str]:
    """The state-cache keys under which an extension of ``base`` keeps the states of ``items``."""
    identity = encoding_identity(base.fingerprint, base.settings)
    return [state_key(identity, base.layer_template, base.scorer.layers, "clause_ends", MAX_CLAUSE_ENDS, prompt)
            for prompt in _judged(items, base.settings)]


def extend_fitted(host: Host, base: FittedGuard, items: Sequence[CalibrationItem], *, added: Sequence[str] = (),
                  extension: Extension, recipe: CalibrationSettings, category_fpr: float = DEFAULT_CATEGORY_FPR,
                  cache: StateCache | None = None, threads: int | None = 1, progress: bool = False) -> FittedGuard:
    """Refit ``base`` (a pooled guard) on ``items`` — its base items, less removed categories, plus the new ones —
    reading states through ``cache``; the categories in ``added`` get (new) thresholds of their own.

    Raises:
        InputError: ``base`` is not a pooled guard, or ``category_fpr`` is out of range.
        CalibrationError: too few items of a class.
    """
    if not isinstance(base.scorer, PooledScorer):
        raise InputError(f"only a pooled guard can be extended (this one is {base.scorer.mode!r}); fit the new "
                         "categories with LatentGuard.calibrate(..., categories={...}) instead")
    if not 0.0 <= category_fpr <= 0.5:
        raise InputError(f"category_fpr must be in [0, 0.5], got {category_fpr}")
    began = time.perf_counter()
    guard = base.settings
    with host.lock:
        blocks = len(decoder_blocks(host.model, base.layer_template))
        if blocks != base.num_blocks:
            raise InputError(f"the guard was fitted for {base.num_blocks} decoder blocks; the host has {blocks}")
        prompts = _judged(items, guard)

        def encode(chosen: Sequence[Prompt]) -> list[PromptEncoding]:
            return encode_batch(host.tokenizer, chosen, system_prompt=guard.system_prompt,
                                max_tokens=guard.max_tokens or host.max_positions)

        layers = base.scorer.layers
        states, prompt_of, end_of, encodings = cached_end_states(
            host.model, prompts, layers, encode=encode, cache=cache,
            identity=encoding_identity(base.fingerprint, guard), pad_token_id=host.tokenizer.pad_token_id,
            batch_size=guard.batch_size, layer_template=base.layer_template, max_ends=MAX_CLAUSE_ENDS,
            progress="reading clause ends" if progress else False)
    read = time.perf_counter()
    ends, labels, groups = item_rows(items, encodings, prompt_of, end_of)
    options = PooledOptions(num_layers=len(layers), target_fpr=recipe.target_fpr, poolings=POOLINGS,
                            min_layer=min(layers), max_layer=max(layers))
    with _torch_threads(threads):
        x = states.to(_F64)
        overall, oof, pooled_report, negative = _fit_window(x, ends, labels, groups, layers, options, _FOLDS)
        if recipe.threshold is not None:
            overall.threshold = float(recipe.threshold)
        stats, cat_names, cat_dirs, cat_mids, cat_cal, own = _fit_categories(
            x, ends, items, labels, groups, overall, oof, negative, added=added, category_fpr=category_fpr)
    empty = torch.zeros(0, *overall.directions.shape, dtype=_F64)
    scorer = PooledScorer(overall.layers, overall.directions, overall.midpoints, overall.calibration,
                          overall.threshold, pooling=overall.pooling, categories=cat_names,
                          category_directions=torch.stack(cat_dirs) if cat_dirs else empty,
                          category_midpoints=torch.stack(cat_mids) if cat_mids else empty,
                          category_calibration=torch.stack(cat_cal) if cat_cal else torch.zeros(0, 2, dtype=_F64),
                          shrinkage=overall.shrinkage)
    rebuilt = scorer_from_artifact(scorer.config(), scorer.to_tensors(), base.centroids)
    removed = set(extension.removed)
    thresholds = {name: value for name, value in guard.category_thresholds.items()
                  if name in cat_names and name not in removed}
    thresholds.update(own)
    policy = {name: action for name, action in guard.category_policy.items() if name in cat_names}
    settings = guard.model_copy(update={"category_thresholds": thresholds, "category_policy": policy})
    n_plain = sum(item.group.startswith("src:") for item in items)
    report: dict[str, Any] = {
        "selection": "label", "selection_used": "label", "mode": "pooled",
        "given": {"harmful": int(labels.sum()), "harmless": int((1 - labels).sum())},
        "kept": {"harmful": int(labels.sum()), "harmless": int((1 - labels).sum())},
        "items": {"plain": n_plain, "wrapped": len(items) - n_plain, "ends": int(x.shape[0])},
        "pooled": pooled_report, "refusal_source": base.refusal_source,
        "seconds": round(time.perf_counter() - began, 2),
        "extension": {**extension.to_json(), "category_fpr": category_fpr,
                      "seconds": {"states": round(read - began, 2), "fit": round(time.perf_counter() - read, 2)},
                      "cache": None if cache is None else {"hits": cache.stats.hits, "misses": cache.stats.misses,
                                                           "corrupt": cache.stats.corrupt}},
        "categories": {name: asdict(value) for name, value in stats.items()},
        **({"response": base.report["response"]} if "response" in base.report else {}),
    }
    logger.info("extended guard: %d items, %d categories, %.1fs (states %.1fs)", len(items), len(cat_names),
                report["seconds"], read - began)
    return FittedGuard(scorer=rebuilt, centroids=base.centroids, refusal_direction=base.refusal_direction,
                       refusal_source=base.refusal_source, settings=settings,
                       fingerprint_parts=dict(base.fingerprint_parts), num_blocks=base.num_blocks,
                       hidden_size=base.hidden_size, layer_template=base.layer_template, report=report,
                       response=base.response)                     # a response part is kept as it is


def _category_directions(negative: _FoldSums, positive: _FoldSums, gamma: float, without: int | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions and midpoints ``(L, d)`` of the positive rows (class 1) against the negative rows (class 0),
    leaving fold ``without`` out of both (None: none)."""
    pairs = [shrinkage_lda(*_two(negative.without(without, j), positive.without(without, j)), [gamma])
             for j in range(negative.sums.shape[1])]
    return torch.stack([w[0] for w, _ in pairs]), torch.stack([m for _, m in pairs])


def _fit_categories(x: torch.Tensor, ends: EndLabels, items: Sequence[CalibrationItem], labels: np.ndarray,
                    groups: np.ndarray, overall: PooledScorer, oof: np.ndarray, negative: _FoldSums, *,
                    added: Sequence[str], category_fpr: float
                    ) -> tuple[dict[str, CategoryStats], list[str], list[torch.Tensor], list[torch.Tensor],
                               list[torch.Tensor], dict[str, float]]:
    """Per category (as :func:`latent_guardrail.pooled.fit_pooled` fits them: its positive ends against every
    harmless end, shrinkage of the overall rule, Platt on those rows); own thresholds for ``added`` ones.

    ``x``: float64 states ``(R, L, d)``; ``negative``: the harmless rows' sums per fold of :func:`_fold_of`
    (from :func:`_fit_window`), so only each category's own rows are summed here.
    """
    row_cat = np.array([items[p].category or "" if items[p].harmful else "" for p in ends.prompt], dtype=object)
    is_negative = ends.label == 0
    gamma = overall.shrinkage
    n_items = len(items)
    a_all, b_all = overall.calibration
    slot = a_all * _z(x, overall.directions, overall.midpoints).numpy() + b_all     # (R,) overall row scores
    order = np.lexsort((-slot, ends.prompt))                                     # by prompt, best row first
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = ends.prompt[order][1:] != ends.prompt[order][:-1]
    decisive = np.full(n_items, -1)
    decisive[ends.prompt[order][first]] = order[first]                            # the decisive end per prompt
    cats = np.array([item.category or "" if item.harmful else "" for item in items], dtype=object)
    fold_rows = _fold_of(groups, _FOLDS)[ends.prompt]
    names, dirs, mids, cals = [], [], [], []
    own: dict[str, float] = {}
    stats: dict[str, CategoryStats] = {}
    threshold = overall.threshold
    flagged_overall = oof >= threshold
    for name in sorted({c for c in cats if c}):
        positive = (ends.label == 1) & (row_cat == name)
        members = cats == name
        n_plain = sum(1 for i in np.flatnonzero(members).tolist() if items[i].group.startswith("src:"))
        if positive.sum() < 2:
            continue
        new = name in added
        rows = x[torch.from_numpy(positive)]                                       # (n, L, d)
        pos = _FoldSums.of_rows(rows, fold_rows[positive] if new else np.zeros(rows.shape[0], dtype=int),
                                _FOLDS if new else 1)
        cdir, cmid = _category_directions(negative, pos, gamma, None)
        mask = positive | is_negative
        a, b = _platt(_z(x, cdir, cmid).numpy()[mask], positive[mask].astype(float))
        names.append(name)
        dirs.append(cdir)
        mids.append(cmid)
        cals.append(torch.tensor([a, b], dtype=_F64))
        overall_rate = float(flagged_overall[members].mean())
        if not new:
            stats[name] = CategoryStats(prompts=n_plain, items=int(members.sum()), overall_detected=overall_rate,
                                        detected=overall_rate)
            continue
        oof_rows = np.zeros(x.shape[0])
        for f in range(_FOLDS):
            test = fold_rows == f
            if test.any():
                fdir, fmid = _category_directions(negative, pos, gamma, f)
                oof_rows[test] = _z(x[torch.from_numpy(test)], fdir, fmid).numpy()
        scores = a * oof_rows[decisive] + b                                  # (items,) at each decisive end
        harmless = labels == 0
        own_threshold = max(0.0, threshold_at_fpr(scores[harmless], category_fpr))
        own[name] = own_threshold
        own_flag = scores >= own_threshold
        stats[name] = CategoryStats(
            prompts=n_plain, items=int(members.sum()), overall_detected=overall_rate,
            detected=float((flagged_overall | own_flag)[members].mean()), own_threshold=own_threshold,
            own_detected=float(own_flag[members].mean()), own_harmless_flagged=float(own_flag[harmless].mean()),
            added=True)
    return stats, names, dirs, mids, cals, own
