"""Fit a guard from labelled prompts: states at t_inst / t_post-inst → centroids, scorer, refusal direction.

Two ways to choose the examples (``CalibrationSettings.selection``):

- ``label``: the prompts as labelled.
- ``behaviour`` (the paper): generate a greedy reply per prompt, judge refusal by phrases, keep
  refused-harmful (+ accepted-harmful if asked) and accepted-harmless. When the host refuses fewer than
  ``min_per_class`` harmful prompts, it falls back to ``label`` with a warning (``auto`` does the same
  silently when there are no refusals at all).

The refusal direction v_refuse = μ_refuse − μ_accept at t_post-inst is fitted from the host's own
refusals when there are enough, else contrastively: states at the end of a prefilled refusal opening
minus those after a prefilled compliance opening.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .activations import extract_end_states
from .augment import CalibrationItem, build_items
from .centroids import Centroids, Scorer, TunedOptions, fit_centroids, fit_paper, fit_tuned
from .datasets import PromptRecord
from .directions import mean_difference
from .distributed import LocalWorkers, Workers
from .errors import CalibrationError, InputError
from .fitted import FittedGuard
from .hosts import Host
from .layers import decoder_blocks, guess_layer_template
from .normalize import normalize_for
from .pooled import PooledOptions, fit_pooled, item_rows
from .positions import Prompt, PromptEncoding, encode_batch
from .refusal import Judge, PhraseJudge
from .scorers import scorer_from_artifact
from .settings import CalibrationSettings, GuardSettings
from .views import MAX_CLAUSE_ENDS, select_views

__all__ = ["FittedGuard", "calibrate", "REFUSAL_PREFILL", "COMPLIANCE_PREFILL", "as_prompt_list"]

logger = logging.getLogger(__name__)

REFUSAL_PREFILL = "I'm sorry, but I can't help with that"
COMPLIANCE_PREFILL = "Sure, here is what you asked for"


def as_prompt_list(items: Sequence[str | PromptRecord | Prompt], what: str) -> list[Prompt]:
    """Plain prompts from strings, :class:`PromptRecord` s or message lists; InputError on anything else."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise InputError(f"{what} must be a list of prompts, got {type(items).__name__}")
    return [item.text if isinstance(item, PromptRecord) else item for item in items]


def _categories_of(items: Sequence[Any]) -> list[str | None]:
    return [item.category if isinstance(item, PromptRecord) else None for item in items]


def _encode(host: Host, prompts: Sequence[Prompt], guard: GuardSettings) -> list[PromptEncoding]:
    return encode_batch(host.tokenizer, prompts, system_prompt=guard.system_prompt,
                        max_tokens=guard.max_tokens or host.max_positions)


def _with_prefill(encoding: PromptEncoding, prefill_ids: tuple[int, ...]) -> PromptEncoding:
    """The prompt followed by an assistant opening; t_post_inst moves to its last token (validated)."""
    ids = encoding.input_ids + prefill_ids
    return PromptEncoding.model_validate({**encoding.model_dump(), "input_ids": ids, "t_post_inst": len(ids) - 1})


def _select_by_behaviour(host: Host, harmful: list[PromptEncoding], harmless: list[PromptEncoding],
                         cal: CalibrationSettings, judge: Judge, progress: bool, workers: Workers
                         ) -> tuple[list[bool], list[bool], dict[str, Any]]:
    replies = workers.generate_replies(host.model, host.tokenizer, harmful + harmless,
                                       max_new_tokens=cal.max_new_tokens, batch_size=cal.batch_size,
                                       progress="judging refusals" if progress else False)
    refused = [judge(reply) for reply in replies]
    refused_h, refused_b = refused[: len(harmful)], refused[len(harmful):]
    stats = {"refused_harmful": sum(refused_h), "accepted_harmful": len(harmful) - sum(refused_h),
             "accepted_harmless": len(harmless) - sum(refused_b), "refused_harmless": sum(refused_b)}
    return refused_h, refused_b, stats


def calibrate(
    host: Host,
    harmful: Sequence[str | PromptRecord | Prompt],
    harmless: Sequence[str | PromptRecord | Prompt],
    *,
    categories: Mapping[str, Sequence[str | PromptRecord | Prompt]] | None = None,
    settings: CalibrationSettings | None = None,
    guard_settings: GuardSettings | None = None,
    judge: Judge | None = None,
    progress: bool = True,
    workers: Workers | None = None,
) -> FittedGuard:
    """Fit a guard for ``host`` from harmful and harmless prompts (and optional extra risk categories).

    Args:
        harmful, harmless: prompts (strings, message lists, or :class:`PromptRecord` s whose ``category``
            names their risk category).
        categories: extra harmful prompts per risk category name (added to ``harmful``).
        workers: who runs the prompt loops: this process (None) or
            :class:`~latent_guardrail.distributed.DataParallel` under ``accelerate launch`` (every process
            passes the same inputs and gets the same guard).

    Raises:
        CalibrationError: too few examples per class.
    """
    with host.lock:
        return _calibrate(host, harmful, harmless, categories=categories, settings=settings,
                          guard_settings=guard_settings, judge=judge, progress=progress,
                          workers=workers if workers is not None else LocalWorkers())


def _calibrate(
    host: Host,
    harmful: Sequence[str | PromptRecord | Prompt],
    harmless: Sequence[str | PromptRecord | Prompt],
    *,
    categories: Mapping[str, Sequence[str | PromptRecord | Prompt]] | None,
    settings: CalibrationSettings | None,
    guard_settings: GuardSettings | None,
    judge: Judge | None,
    progress: bool,
    workers: Workers,
) -> FittedGuard:
    cal = settings if settings is not None else CalibrationSettings()
    guard = guard_settings if guard_settings is not None else GuardSettings()
    started = time.perf_counter()
    harmful_items = list(harmful)
    harmful_cats = _categories_of(harmful_items)
    for name, rows in (categories or {}).items():
        extra = list(rows)
        harmful_items += extra
        harmful_cats += [name] * len(extra)
    harmful_prompts = as_prompt_list(harmful_items, "harmful")
    harmless_prompts = as_prompt_list(list(harmless), "harmless")
    if cal.mode == "pooled":
        sources = [item.source if isinstance(item, PromptRecord) else None for item in harmful_items]
        harmless_sources = [item.source if isinstance(item, PromptRecord) else None for item in harmless]
        items = build_items(list(zip(harmful_prompts, harmful_cats, sources, strict=True)),
                            list(zip(harmless_prompts, harmless_sources, strict=True)),
                            wrapped_per_item=cal.augment, seed=cal.seed)
        return calibrate_items(host, items, settings=cal, guard_settings=guard, progress=progress, workers=workers,
                               started=started)
    if len(harmful_prompts) < 2 or len(harmless_prompts) < 2:
        raise CalibrationError(f"need at least 2 harmful and 2 harmless prompts, got {len(harmful_prompts)} "
                               f"and {len(harmless_prompts)}")
    enc_h = _encode(host, harmful_prompts, guard)
    enc_b = _encode(host, harmless_prompts, guard)
    blocks = decoder_blocks(host.model, guard.layer_template)
    all_layers = tuple(range(len(blocks) + 1))
    report: dict[str, Any] = {"selection": cal.selection, "mode": cal.mode,
                              "given": {"harmful": len(enc_h), "harmless": len(enc_b)}}

    keep_h = [True] * len(enc_h)
    keep_b = [True] * len(enc_b)
    refused_all: list[bool] | None = None
    if cal.selection in ("behaviour", "auto"):
        refused_h, refused_b, stats = _select_by_behaviour(host, enc_h, enc_b, cal,
                                                           judge if judge is not None else PhraseJudge(), progress,
                                                           workers)
        report["behaviour"] = stats
        refused_all = refused_h + refused_b
        enough = stats["refused_harmful"] >= cal.min_per_class and stats["accepted_harmless"] >= cal.min_per_class
        if enough:
            keep_h = [r or cal.include_accepted_harmful for r in refused_h]
            keep_b = [not r for r in refused_b]
            report["selection_used"] = "behaviour"
        else:
            message = (f"the host refused {stats['refused_harmful']} of {len(enc_h)} harmful prompts "
                       f"(fewer than min_per_class={cal.min_per_class}); falling back to label-only calibration. "
                       "A safety system prompt (GuardSettings.system_prompt) makes most hosts refuse more.")
            if cal.selection == "behaviour" or stats["refused_harmful"] > 0:
                warnings.warn(message, stacklevel=2)
            logger.warning(message)
            report["selection_used"] = "label"
    else:
        report["selection_used"] = "label"

    views = ("t_inst", "content_mean")
    read_views = (*views, "t_post_inst")
    states = workers.extract_states(host.model, enc_h + enc_b, all_layers,
                                    pad_token_id=host.tokenizer.pad_token_id, views=read_views,
                                    batch_size=cal.batch_size, layer_template=guard.layer_template,
                                    progress="reading hidden states" if progress else False)
    read = select_views(states, read_views, views).double()                      # (n, views, layers, d)
    post = select_views(states, read_views, ["t_post_inst"])[:, 0].double()        # (n, layers, d)
    inst = select_views(states, read_views, ["t_inst"])[:, 0].double()             # (n, layers, d)
    idx_h = [i for i, keep in enumerate(keep_h) if keep]
    idx_b = [len(enc_h) + i for i, keep in enumerate(keep_b) if keep]
    if len(idx_h) < 2 or len(idx_b) < 2:
        raise CalibrationError(f"after selection only {len(idx_h)} harmful and {len(idx_b)} harmless prompts remain")
    cats_kept = [harmful_cats[i] for i in idx_h]
    centroids = fit_centroids(inst[idx_h], inst[idx_b], all_layers, cats_kept)
    scorer: Scorer
    if cal.mode == "paper":
        scorer = fit_paper(centroids, 0.0 if cal.threshold is None else cal.threshold)
    else:
        options = TunedOptions(num_layers=cal.num_layers, target_fpr=cal.target_fpr, max_layer=cal.max_layer,
                               seed=cal.seed)
        scorer, tuned_report = fit_tuned(read[idx_h], read[idx_b], all_layers, cats_kept, options, views=views)
        if cal.threshold is not None:
            scorer.threshold = float(cal.threshold)
        report["tuned"] = tuned_report
    report["kept"] = {"harmful": len(idx_h), "harmless": len(idx_b)}

    direction, source = _refusal_direction(host, post, refused_all, enc_h + enc_b, cal, guard, all_layers, progress,
                                           workers)
    report["refusal_source"] = source
    report["seconds"] = round(time.perf_counter() - started, 2)
    parts = host.fingerprint_parts(guard.system_prompt)
    # keep exactly what an artifact stores (float32), so a saved and reloaded guard scores identically
    centroids = Centroids(centroids.layers, centroids.harmful.float().double(), centroids.harmless.float().double(),
                          {k: v.float().double() for k, v in centroids.categories.items()})
    scorer = scorer_from_artifact(scorer.config(), scorer.to_tensors(), centroids)
    return FittedGuard(scorer=scorer, centroids=centroids, refusal_direction=direction, refusal_source=source,
                       settings=guard, fingerprint_parts=parts, num_blocks=len(blocks),
                       hidden_size=int(inst.shape[-1]),
                       layer_template=guard.layer_template or guess_layer_template(host.model), report=report)


def calibrate_items(host: Host, items: Sequence[CalibrationItem], *, settings: CalibrationSettings | None = None,
                    guard_settings: GuardSettings | None = None, progress: bool = True,
                    workers: Workers | None = None, started: float | None = None) -> FittedGuard:
    """Fit the pooled rule from calibration items (prompts with labels, families and request spans).

    Reads the state at every clause end of every item (all layers, one pass each), labels each end
    (:func:`latent_guardrail.augment.end_labels`), and fits :func:`latent_guardrail.pooled.fit_pooled` with
    leave-one-group-out cross-validation over the items' groups. The centroids (paper mode, steering) come from
    the t_inst states of the items as given (groups ``src:*``); the refusal direction is contrastive.
    Callers hold ``host.lock``.

    Raises:
        CalibrationError: too few items of a class.
    """
    cal = settings if settings is not None else CalibrationSettings(mode="pooled")
    guard = guard_settings if guard_settings is not None else GuardSettings()
    workers = workers if workers is not None else LocalWorkers()
    began = started if started is not None else time.perf_counter()
    if sum(item.harmful for item in items) < 4 or sum(not item.harmful for item in items) < 4:
        raise CalibrationError("the pooled rule needs at least 4 harmful and 4 harmless prompts")
    prompts = [normalize_for(item.prompt, guard)[0] for item in items]
    encodings = _encode(host, prompts, guard)
    blocks = decoder_blocks(host.model, guard.layer_template)
    all_layers = tuple(range(len(blocks) + 1))
    states, prompt_of, end_of = extract_end_states(
        host.model, encodings, all_layers, pad_token_id=host.tokenizer.pad_token_id, batch_size=cal.batch_size,
        layer_template=guard.layer_template, max_ends=MAX_CLAUSE_ENDS,
        progress="reading clause ends" if progress else False)
    ends, labels, groups = item_rows(items, encodings, prompt_of, end_of)
    cats = [item.category if item.harmful else None for item in items]
    options = PooledOptions(num_layers=cal.num_layers, target_fpr=cal.target_fpr, max_layer=cal.max_layer)
    scorer, pooled_report = fit_pooled(states, ends, labels, groups, all_layers, cats, options)
    if cal.threshold is not None:
        scorer.threshold = float(cal.threshold)
    plain = [i for i, item in enumerate(items) if item.group.startswith("src:")]
    inst = states[torch.from_numpy(ends.last)].double()                     # (items, layers, d): t_inst
    idx_h = [i for i in plain if items[i].harmful]
    idx_b = [i for i in plain if not items[i].harmful]
    centroids = fit_centroids(inst[idx_h], inst[idx_b], all_layers, [cats[i] for i in idx_h])
    plain_enc = [encodings[i] for i in plain]
    direction, source = _refusal_direction(host, inst, None, plain_enc, cal, guard, all_layers, progress, workers)
    report: dict[str, Any] = {
        "selection": "label", "selection_used": "label", "mode": "pooled",
        "given": {"harmful": int(labels.sum()), "harmless": int((1 - labels).sum())},
        "kept": {"harmful": int(labels.sum()), "harmless": int((1 - labels).sum())},
        "items": {"plain": len(plain), "wrapped": len(items) - len(plain), "ends": int(states.shape[0])},
        "pooled": pooled_report, "refusal_source": source, "seconds": round(time.perf_counter() - began, 2)}
    centroids = Centroids(centroids.layers, centroids.harmful.float().double(), centroids.harmless.float().double(),
                          {k: v.float().double() for k, v in centroids.categories.items()})
    rebuilt = scorer_from_artifact(scorer.config(), scorer.to_tensors(), centroids)
    return FittedGuard(scorer=rebuilt, centroids=centroids, refusal_direction=direction, refusal_source=source,
                       settings=guard, fingerprint_parts=host.fingerprint_parts(guard.system_prompt),
                       num_blocks=len(blocks), hidden_size=int(states.shape[-1]),
                       layer_template=guard.layer_template or guess_layer_template(host.model), report=report)


def _refusal_direction(host: Host, post: torch.Tensor, refused: list[bool] | None,
                       encodings: list[PromptEncoding], cal: CalibrationSettings, guard: GuardSettings,
                       layers: tuple[int, ...], progress: bool, workers: Workers) -> tuple[torch.Tensor, str]:
    """v_refuse ``(layers, d)``: behavioural when the host refused enough prompts, else contrastive."""
    if refused is not None and cal.min_per_class <= sum(refused) <= len(refused) - cal.min_per_class:
        return mean_difference(post, torch.tensor(refused)).float(), "behaviour"
    step = max(1, len(encodings) // cal.refusal_prompts)
    subset = encodings[::step][: cal.refusal_prompts]
    refuse_ids, comply_ids = (tuple(host.tokenizer.encode(text, add_special_tokens=False))
                              for text in (REFUSAL_PREFILL, COMPLIANCE_PREFILL))
    prefilled = [_with_prefill(e, refuse_ids) for e in subset] + [_with_prefill(e, comply_ids) for e in subset]
    states = workers.extract_states(host.model, prefilled, layers, pad_token_id=host.tokenizer.pad_token_id,
                                    views=("t_post_inst",), batch_size=cal.batch_size,
                                    layer_template=guard.layer_template,
                                    progress="refusal direction" if progress else False)[:, 0].double()
    n = len(subset)
    return mean_difference(states, torch.arange(2 * n) < n).float(), "contrastive"
