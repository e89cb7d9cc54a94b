"""Evaluate guards and baselines on labelled sets, on one host, in one run.

:func:`evaluate` reads every set's hidden states once (all residual layers; t_inst, content mean and
t_post-inst), scores each guard from them, runs the chosen baselines on the same host, and returns an
:class:`EvalResult`: a JSON-able :class:`EvalReport` (per-set rates, overall precision / recall / F1 /
AUROC / TPR at fixed FPRs and the confusion table per rule) and the per-prompt arrays the plots need.
Every expensive step is cached by content hash (:class:`~latent_guardrail.evaluation.cache.ResultCache`).
The baselines come from :data:`~latent_guardrail.evaluation.registry.BASELINES` (one :class:`Baseline` each).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..centroids import cosine_scores, fit_paper
from ..errors import InputError
from ..guard import LatentGuard
from ..hosts import Host
from ..metrics import auroc, confusion, tpr_at_fpr
from ..views import select_views
from .cache import ResultCache, content_key, guard_identity, host_identity
from .categories import CategoryReport, category_report
from .registry import Baseline, BaselineRun, get_baseline
from .sets import EvalSet, find_leaks
from .settings import BASELINE_NAMES, BaselineName, EvalSettings

__all__ = [
    "BASELINE_NAMES",
    "BEHAVIOURS",
    "BaselineName",
    "EvalData",
    "EvalReport",
    "EvalResult",
    "EvalSettings",
    "Metrics",
    "RuleReport",
    "SetRate",
    "evaluate",
    "metrics_for",
    "paper_variant",
]

BEHAVIOURS = ("refused-harmful", "accepted-harmful", "accepted-harmless", "refused-harmless")
_BASE_VIEWS = ("t_inst", "t_post_inst")
_CHUNK = 64


class SetRate(BaseModel):
    """One rule on one set: how many prompts it flagged.

    ``rate`` is the detection rate (flagged share) of a harmful set and the pass rate (unflagged share) of a
    harmless set: higher is better for both.
    """

    model_config = ConfigDict(frozen=True)

    set: str
    label: str
    n: int
    flagged: int
    rate: float
    mean_score: float
    truncated: int = 0


class Metrics(BaseModel):
    """Binary metrics of one rule over a pool of harmful (positive) and harmless (negative) prompts.

    Rates that need a class the pool lacks are ``None`` and ``notes`` says why (e.g. AUROC is undefined when
    every prompt is harmful).
    """

    model_config = ConfigDict(frozen=True)

    n_harmful: int
    n_harmless: int
    tp: int
    fn: int
    fp: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float
    balanced_accuracy: float | None
    auroc: float | None
    tpr_at_fpr: dict[str, float | None]
    notes: list[str] = Field(default_factory=list)


class RuleReport(BaseModel):
    """One guard or baseline: threshold, per-set rates, overall and per-group metrics."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["guard", "baseline"]
    description: str
    threshold: float
    sets: list[SetRate]
    overall: Metrics
    groups: dict[str, Metrics] = Field(default_factory=dict)
    categories: CategoryReport | None = Field(
        default=None, description="Guards: detection per category, the category confusion matrix, false positives "
                                  "per category (evaluation.categories).")


class SetInfo(BaseModel):
    """An evaluated set, as the report lists it."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    n: int
    source: str | None
    group: str | None
    truncated: int = 0


class EvalReport(BaseModel):
    """Everything an evaluation found, JSON-serialisable (``model_dump_json``)."""

    host: str
    host_fingerprint: str
    settings: EvalSettings
    sets: list[SetInfo]
    rules: list[RuleReport]
    leakage: dict[str, int] = Field(default_factory=dict)
    behaviour: dict[str, dict[str, int]] | None = None
    layer_separation: dict[int, float | None] | None = None
    pca_layer: int | None = None
    guard_layers: dict[str, list[int]] = Field(default_factory=dict)
    perplexity_reference: int | None = None
    notes: list[str] = Field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0

    def rule(self, name: str) -> RuleReport:
        """The rule called ``name``; KeyError names the rules there are."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(f"no rule {name!r}; rules: {[r.name for r in self.rules]}")


@dataclass
class EvalData:
    """Per-prompt arrays behind the report (for plots).

    ``scores[rule][set]``: ``(n,)`` float64; ``layer_scores[set]``: ``(n, num_blocks + 1)`` per-layer
    cos(h, μ_harmful) − cos(h, μ_harmless) at t_inst from the first guard's centroids; ``pca_inst[set]`` and
    ``pca_post[set]``: ``(n, d_model)`` states at ``pca_layer`` at t_inst and t_post-inst; ``refused[set]``:
    ``(n,)`` bool, the host's own refusals (keyword judge), when that baseline ran. Guards only:
    ``decisions[rule][set]`` ``(n,)`` bool, the verdicts' decisions (policy included); ``named[rule][set]``
    ``(n,)`` the index of the verdict's category in the guard's categories (-1: none); ``own[rule][set]`` ``(n,)``
    bool, a category's own threshold decided.
    """

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    named: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    own: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    layer_scores: dict[str, np.ndarray] = field(default_factory=dict)
    pca_inst: dict[str, np.ndarray] = field(default_factory=dict)
    pca_post: dict[str, np.ndarray] = field(default_factory=dict)
    refused: dict[str, np.ndarray] = field(default_factory=dict)
    replies: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class EvalResult:
    """The report and the arrays it was computed from."""

    report: EvalReport
    data: EvalData
    sets: list[EvalSet]


# ----------------------------------------------------------------------------------------------- metrics

def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def metrics_for(pos: np.ndarray, neg: np.ndarray, threshold: float, fprs: Sequence[float] = (0.01, 0.05), *,
                pos_flags: np.ndarray | None = None, neg_flags: np.ndarray | None = None) -> Metrics:
    """:class:`Metrics` of scores ``pos`` ``(n_harmful,)`` and ``neg`` ``(n_harmless,)``; flagged iff ≥ threshold,
    or as ``pos_flags``/``neg_flags`` say (a guard's decisions, when a category policy decides). AUROC and TPR at
    fixed FPR come from the scores."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    counts = confusion(pos >= threshold if pos_flags is None else np.asarray(pos_flags, dtype=bool).ravel(),
                       neg >= threshold if neg_flags is None else np.asarray(neg_flags, dtype=bool).ravel())
    tp, fn, fp, tn = counts["tp"], counts["fn"], counts["fp"], counts["tn"]
    notes = []
    if pos.size == 0 or neg.size == 0:
        missing = "harmful" if pos.size == 0 else "harmless"
        notes.append(f"AUROC, balanced accuracy and TPR at fixed FPR are undefined: no {missing} prompts "
                     "(one class only).")
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = None if precision is None or recall is None or precision + recall == 0 else \
        2 * precision * recall / (precision + recall)
    if precision is None and pos.size:
        notes.append("precision is undefined: nothing was flagged.")
    total = pos.size + neg.size
    tnr = _ratio(tn, tn + fp)
    return Metrics(
        n_harmful=int(pos.size), n_harmless=int(neg.size), tp=tp, fn=fn, fp=fp, tn=tn, precision=precision,
        recall=recall, f1=f1, accuracy=(tp + tn) / total if total else math.nan,
        balanced_accuracy=None if recall is None or tnr is None else (recall + tnr) / 2,
        auroc=auroc(pos, neg),
        tpr_at_fpr={f"{fpr:g}": tpr_at_fpr(pos, neg, fpr) for fpr in fprs},
        notes=notes,
    )


def _rule_report(name: str, kind: Literal["guard", "baseline"], description: str, threshold: float,
                 scores: Mapping[str, np.ndarray], sets: Sequence[EvalSet], truncated: Mapping[str, int],
                 fprs: Sequence[float], flags: Mapping[str, np.ndarray] | None = None,
                 categories: CategoryReport | None = None) -> RuleReport:
    rates = []
    for s in sets:
        values = scores[s.name]
        flagged = int((values >= threshold).sum() if flags is None else flags[s.name].astype(bool).sum())
        rates.append(SetRate(set=s.name, label=s.label, n=len(values), flagged=flagged,
                             rate=(flagged if s.harmful else len(values) - flagged) / max(1, len(values)),
                             mean_score=float(np.mean(values)) if len(values) else math.nan,
                             truncated=truncated.get(s.name, 0)))

    def pool(chosen: Sequence[EvalSet]) -> Metrics:
        pos = [scores[s.name] for s in chosen if s.harmful]
        neg = [scores[s.name] for s in chosen if not s.harmful]
        both = {}
        if flags is not None:
            pos_f = [flags[s.name] for s in chosen if s.harmful]
            neg_f = [flags[s.name] for s in chosen if not s.harmful]
            both = {"pos_flags": np.concatenate(pos_f) if pos_f else np.zeros(0, dtype=bool),
                    "neg_flags": np.concatenate(neg_f) if neg_f else np.zeros(0, dtype=bool)}
        return metrics_for(np.concatenate(pos) if pos else np.zeros(0), np.concatenate(neg) if neg else np.zeros(0),
                           threshold, fprs, **both)

    groups: dict[str, list[EvalSet]] = {}
    for s in sets:
        if s.group is not None:
            groups.setdefault(s.group, []).append(s)
    return RuleReport(name=name, kind=kind, description=description, threshold=threshold, sets=rates,
                      overall=pool(sets),
                      groups={g: pool(members) for g, members in groups.items() if len(members) > 1},
                      categories=categories)


# ----------------------------------------------------------------------------------------------- passes

def paper_variant(guard: LatentGuard, threshold: float = 0.0) -> LatentGuard:
    """The paper's centroid rule on ``guard``'s own calibration centroids (all layers, t_inst), α = ``threshold``.

    Equal to a label-only ``mode="paper"`` calibration on the same prompts, without reading them again.
    """
    fitted = replace(guard.fitted, scorer=fit_paper(guard.fitted.centroids, threshold))
    return LatentGuard(guard.host, fitted, guard.settings.model_copy(update={"threshold": None}))


def _guard_groups(guards: Mapping[str, LatentGuard]) -> list[list[str]]:
    """Guards that encode prompts the same way (system prompt, limits) share one forward pass."""
    groups: dict[str, list[str]] = {}
    for name, guard in guards.items():
        key = guard.settings.model_dump_json(include={"system_prompt", "max_tokens", "max_chars", "layer_template"})
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _guard_pass(guards: Mapping[str, LatentGuard], names: Sequence[str], texts: Sequence[str], pca_layer: int,
                label: str, progress: bool) -> dict[str, np.ndarray]:
    """Scores of ``names`` plus per-layer cosine scores and PCA states, from one read of all layers."""
    first = guards[names[0]]
    num_layers = first.host.num_blocks + 1
    layers = list(range(num_layers))
    encodings = [first.encode(text) for text in texts]
    out: dict[str, list[np.ndarray]] = {f"{kind}:{n}": [] for n in names for kind in ("score", "harmful", "named",
                                                                                      "own")}
    out.update({"layer_scores": [], "pca_inst": [], "pca_post": [], "truncated": []})
    centroids = first.fitted.centroids
    chunks = [encodings[start:start + _CHUNK] for start in range(0, len(encodings), _CHUNK)]
    read = list(dict.fromkeys([*_BASE_VIEWS, *(v for n in names for v in guards[n].views)]))
    for chunk in tqdm(chunks, desc=f"{label}: hidden states", disable=not progress, unit="chunk"):
        with first.host.lock:
            states = first.states(chunk, layers=layers, views=read).double()       # (n, slots, L+1, d)
        for name in names:
            guard = guards[name]
            picked = select_views(states, read, guard.views)[:, :, list(guard.layers)]   # (n, slots, layers, d)
            verdicts = guard.verdicts_from_states(chunk, picked)
            out[f"score:{name}"].append(np.array([v.score for v in verdicts]))
            out[f"harmful:{name}"].append(np.array([v.harmful for v in verdicts], dtype=bool))
            out[f"named:{name}"].append(np.array([guard.categories.index(v.category) if v.category in guard.categories
                                                  else -1 for v in verdicts], dtype=np.int64))
            out[f"own:{name}"].append(np.array([v.decided_by.startswith("category_threshold:") for v in verdicts],
                                               dtype=bool))
        inst = select_views(states, read, ["t_inst"])[:, 0]                          # (n, L+1, d)
        post = select_views(states, read, ["t_post_inst"])[:, 0]
        out["layer_scores"].append(
            cosine_scores(inst[:, list(centroids.layers)], centroids.harmful, centroids.harmless).numpy())
        out["pca_inst"].append(inst[:, pca_layer].float().numpy())
        out["pca_post"].append(post[:, pca_layer].float().numpy())
        out["truncated"].append(np.array([e.truncated for e in chunk], dtype=bool))
    return {key: np.concatenate(values) for key, values in out.items()}


def _default_pca_layer(guards: Mapping[str, LatentGuard]) -> int:
    for guard in guards.values():
        if guard.mode in ("tuned", "pooled"):
            return int(guard.layers[len(guard.layers) // 2])
    first = next(iter(guards.values()))
    return round(2 * first.host.num_blocks / 3)


def _checked_host(guards: Mapping[str, LatentGuard], sets: Sequence[EvalSet]) -> Host:
    """The one host of ``guards``, once the inputs are usable.

    Raises:
        InputError: no guard, no set, duplicate set names, an empty set, or guards on different hosts.
    """
    if not guards:
        raise InputError("evaluate needs at least one guard")
    if not sets:
        raise InputError("evaluate needs at least one labelled set")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise InputError(f"set names must be unique, got {names}")
    for s in sets:
        if not s.texts:
            raise InputError(f"set {s.name!r} is empty; it needs at least one prompt")
    first = next(iter(guards.values()))
    for name, guard in guards.items():
        if guard.host is not first.host and guard.fingerprint != first.fingerprint:
            raise InputError(f"guard {name!r} runs on another host; evaluate guards of one host together")
    return first.host


def _score_guards(guards: Mapping[str, LatentGuard], sets: Sequence[EvalSet], *, host_id: str, pca_layer: int,
                  cfg: EvalSettings, store: ResultCache, data: EvalData, truncated: dict[str, dict[str, int]]) -> None:
    """Every guard's scores on every set (one cached forward pass per set and encoding group), into ``data``."""
    groups = _guard_groups(guards)
    identities = {name: guard_identity(guard) for name, guard in guards.items()}
    for s in sets:
        for index, group in enumerate(groups):
            key = content_key("guards-2", host_id, [(n, identities[n]) for n in group], pca_layer, list(s.texts))

            def read(group: list[str] = group, s: EvalSet = s) -> dict[str, np.ndarray]:
                return _guard_pass(guards, group, s.texts, pca_layer, s.name, cfg.progress)

            arrays = store.arrays(key, read)
            for name in group:
                data.scores.setdefault(name, {})[s.name] = arrays[f"score:{name}"]
                data.decisions.setdefault(name, {})[s.name] = arrays[f"harmful:{name}"].astype(bool)
                data.named.setdefault(name, {})[s.name] = arrays[f"named:{name}"].astype(np.int64)
                data.own.setdefault(name, {})[s.name] = arrays[f"own:{name}"].astype(bool)
                truncated.setdefault(name, {})[s.name] = int(arrays["truncated"].sum())
            if index == 0:
                data.layer_scores[s.name] = arrays["layer_scores"]
                data.pca_inst[s.name] = arrays["pca_inst"]
                data.pca_post[s.name] = arrays["pca_post"]
    for name, guard in guards.items():
        data.thresholds[name] = guard.threshold


def _run_baselines(baselines: Sequence[Baseline], run: BaselineRun, sets: Sequence[EvalSet], data: EvalData,
                   truncated: dict[str, dict[str, int]]) -> int | None:
    """Run ``baselines`` in order, into ``data``; returns how many reference prompts set a threshold (or None)."""
    reference_count: int | None = None
    for baseline in baselines:
        found = baseline.run(run, sets)
        data.scores[baseline.name] = found.scores
        data.thresholds[baseline.name] = found.threshold
        data.replies.update(found.replies)
        data.refused.update(found.refused)
        truncated[baseline.name] = found.truncated
        if found.reference_count is not None:
            reference_count = found.reference_count
    return reference_count


def _guard_description(guard: LatentGuard) -> str:
    if len(guard.layers) > 1:
        return f"latent guard, {guard.mode} mode, layers {guard.layers[0]}–{guard.layers[-1]}"
    return f"latent guard, {guard.mode} mode, layer {guard.layers[0]}"


def _behaviour(data: EvalData, sets: Sequence[EvalSet]) -> dict[str, dict[str, int]] | None:
    """Per set, how often the host refused and accepted (None when no baseline read its answers)."""
    if not data.refused:
        return None
    behaviour = {}
    for s in sets:
        refused = int(data.refused[s.name].sum())
        accepted = len(s.texts) - refused
        behaviour[s.name] = ({"refused-harmful": refused, "accepted-harmful": accepted} if s.harmful
                             else {"accepted-harmless": accepted, "refused-harmless": refused})
    return behaviour


def _layer_separation(data: EvalData, sets: Sequence[EvalSet]) -> dict[int, float | None] | None:
    """AUROC of the per-layer cosine scores, harmful against harmless sets (None without both)."""
    pos = [data.layer_scores[s.name] for s in sets if s.harmful]
    neg = [data.layer_scores[s.name] for s in sets if not s.harmful]
    if not (pos and neg):
        return None
    p, q = np.concatenate(pos), np.concatenate(neg)
    return {layer: auroc(p[:, layer], q[:, layer]) for layer in range(p.shape[1])}


def evaluate(
    guards: Mapping[str, LatentGuard],
    sets: Sequence[EvalSet],
    *,
    settings: EvalSettings | None = None,
    calibration_texts: Sequence[str] | None = None,
    reference_harmless: Sequence[str] | None = None,
    cache: ResultCache | None = None,
) -> EvalResult:
    """Score ``guards`` (name → guard, all on one host) and the baselines on ``sets``.

    The baselines are those of ``settings.baselines``, looked up in
    :data:`~latent_guardrail.evaluation.registry.BASELINES` and run in that order.

    Args:
        calibration_texts: the prompts the guards were fitted on; evaluation prompts among them are counted
            per set (``report.leakage``) and a :class:`~latent_guardrail.evaluation.sets.LeakageWarning` is issued.
        reference_harmless: harmless prompts that set the perplexity heuristic's threshold (default: the bundled
            harmless calibration set).
        cache: where results are cached (default: ``cache_root()/eval``).

    Raises:
        InputError: no guard, no set, guards on different hosts, or an empty set.
    """
    started = time.perf_counter()
    cfg = settings if settings is not None else EvalSettings()
    store = cache if cache is not None else ResultCache()
    host = _checked_host(guards, sets)
    baselines = [get_baseline(name) for name in cfg.baselines]
    host_id = host_identity(host)
    pca_layer = cfg.pca_layer if cfg.pca_layer is not None else _default_pca_layer(guards)
    if not 0 <= pca_layer <= host.num_blocks:
        raise InputError(f"pca_layer must be in 0..{host.num_blocks}, got {pca_layer}")
    notes: list[str] = []
    leakage = find_leaks(calibration_texts, sets) if calibration_texts is not None else {}
    if calibration_texts is None:
        notes.append("calibration prompts unknown: leakage between calibration and evaluation was not checked.")

    data = EvalData()
    truncated: dict[str, dict[str, int]] = {}
    _score_guards(guards, sets, host_id=host_id, pca_layer=pca_layer, cfg=cfg, store=store, data=data,
                  truncated=truncated)
    reference_count = _run_baselines(baselines, BaselineRun(host, host_id, cfg, store, reference_harmless), sets,
                                     data, truncated)

    rules = [_rule_report(name, "guard", _guard_description(guard), data.thresholds[name], data.scores[name], sets,
                          truncated[name], cfg.fprs, flags=data.decisions[name],
                          categories=category_report(guard.categories, sets, data.decisions[name], data.named[name],
                                                     data.own[name]))
             for name, guard in guards.items()]
    rules += [_rule_report(baseline.name, "baseline", baseline.title, data.thresholds[baseline.name],
                           data.scores[baseline.name], sets, truncated[baseline.name], cfg.fprs)
              for baseline in baselines]
    separation = _layer_separation(data, sets)
    if separation is None:
        notes.append("per-layer separation needs harmful and harmless sets.")
    for rule in rules:
        notes.extend(f"{rule.name}: {note}" for note in rule.overall.notes if rule.kind == "guard")
    for baseline in {baseline.name: baseline for baseline in baselines}.values():
        notes.extend(baseline.notes(cfg))
    report = EvalReport(
        host=host.name, host_fingerprint=host_id, settings=cfg,
        sets=[SetInfo(name=s.name, label=s.label, n=len(s.texts), source=s.source, group=s.group,
                      truncated=max((truncated[n].get(s.name, 0) for n in guards), default=0)) for s in sets],
        rules=rules, leakage=leakage, behaviour=_behaviour(data, sets), layer_separation=separation,
        pca_layer=pca_layer, guard_layers={name: list(guard.layers) for name, guard in guards.items()},
        perplexity_reference=reference_count, notes=notes, cache_hits=store.hits, cache_misses=store.misses,
        seconds=round(time.perf_counter() - started, 2),
    )
    if any(s.truncated for s in report.sets):
        warnings.warn("some prompts were longer than the context and were cut from the left "
                      "(see the 'truncated' counts)", UserWarning, stacklevel=2)
    return EvalResult(report=report, data=data, sets=list(sets))
