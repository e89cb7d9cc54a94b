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
held-out harmless items (leave-one-group-out cross-validation, never below log-odds 0). The rows of a removed category
leave the calibration data (they are not relabelled harmless).

The result's ``report["extension"]`` records what was added (the texts), removed and which base was used, so
an extended guard can be extended again; ``report["categories"]`` holds each category's counts and its
cross-validated detection (:class:`CategoryStats`).
"""

from __future__ import annotations

import contextlib
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
from .pooled import (
    POOLINGS,
    CategoryRows,
    EndLabels,
    PooledOptions,
    PooledScorer,
    Pooling,
    _pooled_scores,
    finish_fit,
    item_rows,
    shrinkage_lda,
)
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
        own_detected: share of its items its own score flags at ``own_threshold`` (leave-one-group-out CV).
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


def fit_window(states: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray,
               layers: Sequence[int], options: PooledOptions) -> tuple[PooledScorer, np.ndarray, dict[str, Any]]:
    """The pooled rule on every layer of ``states`` ``(R, len(layers), d)`` (one window), as
    :func:`latent_guardrail.pooled.fit_pooled` fits it when its window is those layers (same shrinkage and pooling
    candidates, leave-one-group-out AUROC, Platt, threshold), without categories.

    Returns:
        (scorer, out-of-fold calibrated prompt scores ``(n_prompts,)``, report with fit_pooled's keys).
    """
    scorer, report, rows = _fit_window(states.to(_F64), ends, labels, groups, layers, options, None)
    return scorer, rows.logit, report


def _fit_window(x: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray, layers: Sequence[int],
                options: PooledOptions, categories: Sequence[str | None] | None
                ) -> tuple[PooledScorer, dict[str, Any], CategoryRows]:
    """:func:`fit_window` on float64 states ``x`` ``(R, L, d)``, with the ``categories`` of the prompts (and so the
    category mix) fitted as :func:`latent_guardrail.pooled.fit_pooled` fits them.

    The rows are sorted once by group and label, so each group's and class's rows are one slice: the per-group
    sums and the held-out scores come from those slices without masking all rows.
    """
    n_prompts = labels.shape[0]
    if min((labels == 1).sum(), (labels == 0).sum()) < 4:
        raise CalibrationError("the pooled rule needs at least 4 harmful and 4 harmless prompts")
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    row_group = group_index[ends.prompt]
    order = np.lexsort((ends.label, row_group))                    # by group, then label -1, 0, 1
    bounds = np.searchsorted(row_group[order] * 3 + ends.label[order] + 1, np.arange(3 * n_groups + 1))
    index = torch.from_numpy(order)
    gammas = list(options.shrinkage)
    d = x.shape[2]
    oof = np.zeros((len(gammas), ends.prompt.shape[0], len(layers)))
    finals = []
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
                scatter[g] += rows.T @ rows
        total_count, total_sums, total_scatter = count.sum(0), sums.sum(0), scatter.sum(0)
        for g in range(n_groups):
            lo, hi = int(bounds[3 * g]), int(bounds[3 * g + 3])
            if hi == lo:
                continue
            w, mid = shrinkage_lda(total_count - count[g], total_sums - sums[g], total_scatter - scatter[g], gammas)
            z = xs[lo:hi] @ w.T - mid @ w.T                          # (rows, k)
            oof[:, order[lo:hi], j] = z.T.numpy()
        finals.append(shrinkage_lda(total_count, total_sums.clone(), total_scatter.clone(), gammas))
    best: tuple[float, int, Pooling, np.ndarray] | None = None
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
    dirs = torch.stack([finals[j][0][k] for j in range(len(layers))])
    mids = torch.stack([finals[j][1] for j in range(len(layers))])
    return finish_fit(x, ends, labels, groups, layers, range(len(layers)), gammas[k], pooling, (a, b), dirs, mids,
                      a * oof[k].mean(axis=1) + b, cv_auc, candidates, categories, options)


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
        scorer, pooled_report, category_rows = _fit_window(
            x, ends, labels, groups, layers, options, [item.category if item.harmful else None for item in items])
        if recipe.threshold is not None:
            scorer.threshold = float(recipe.threshold)
        stats, own = _category_stats(x, ends, items, labels, scorer, category_rows, added=added,
                                     category_fpr=category_fpr)
    cat_names = list(scorer.categories)
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


def _category_stats(x: torch.Tensor, ends: EndLabels, items: Sequence[CalibrationItem], labels: np.ndarray,
                    scorer: PooledScorer, rows: CategoryRows, *, added: Sequence[str], category_fpr: float
                    ) -> tuple[dict[str, CategoryStats], dict[str, float]]:
    """Each category's cross-validated detection, and own thresholds for the ``added`` ones: where the category's
    out-of-fold score (``rows``, leave-one-group-out) at each prompt's decisive end flags ``category_fpr`` of
    the harmless items.

    ``x``: float64 states ``(R, L, d)``; the decisive end of a prompt is its best-scoring end under ``scorer``.
    """
    slot = torch.cat([scorer.slot_scores(part.unsqueeze(1)).mean(-1)[:, 0] for part in x.split(4096)]).numpy()
    order = np.lexsort((-slot, ends.prompt))                                     # by prompt, best row first
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = ends.prompt[order][1:] != ends.prompt[order][:-1]
    decisive = np.full(len(items), -1)
    decisive[ends.prompt[order][first]] = order[first]                            # the decisive end per prompt
    cats = np.array([item.category or "" if item.harmful else "" for item in items], dtype=object)
    flagged_overall = rows.logit >= scorer.threshold
    harmless = labels == 0
    own: dict[str, float] = {}
    stats: dict[str, CategoryStats] = {}
    for c, name in enumerate(rows.names):
        members = cats == name
        n_plain = sum(1 for i in np.flatnonzero(members).tolist() if items[i].group.startswith("src:"))
        overall_rate = float(flagged_overall[members].mean())
        if name not in added:
            stats[name] = CategoryStats(prompts=n_plain, items=int(members.sum()), overall_detected=overall_rate,
                                        detected=overall_rate)
            continue
        scores = rows.rows[c][decisive]                                          # (items,) at each decisive end
        own_threshold = max(0.0, threshold_at_fpr(scores[harmless], category_fpr))
        own[name] = own_threshold
        own_flag = scores >= own_threshold
        stats[name] = CategoryStats(
            prompts=n_plain, items=int(members.sum()), overall_detected=overall_rate,
            detected=float((flagged_overall | own_flag)[members].mean()), own_threshold=own_threshold,
            own_detected=float(own_flag[members].mean()), own_harmless_flagged=float(own_flag[harmless].mean()),
            added=True)
    return stats, own
