"""Evaluate guards and baselines on labelled sets, on one host, in one run.

:func:`evaluate` reads every set's hidden states once (all residual layers; t_inst, content mean and
t_post-inst), scores each guard from them, runs the chosen baselines on the same host, and returns an
:class:`EvalResult`: a JSON-able :class:`EvalReport` (per-set rates, overall precision / recall / F1 /
AUROC / TPR at fixed FPRs and the confusion table per rule) and the per-prompt arrays the plots need.
Every expensive step is cached by content hash (:class:`~latent_guardrail.evaluation.cache.ResultCache`).
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
from ..datasets import read_calibration_sets
from ..errors import InputError
from ..guard import LatentGuard
from ..metrics import auroc, confusion, threshold_at_fpr, tpr_at_fpr
from ..refusal import REFUSAL_PHRASES, PhraseJudge
from ..settings import SAFETY_SYSTEM_PROMPT
from .baselines import SELF_CHECK_PROMPT, host_replies, keyword_judge_scores, perplexity_scores, self_check_scores
from .cache import ResultCache, content_key, guard_identity, host_identity
from .sets import EvalSet, find_leaks

__all__ = [
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

BaselineName = Literal["keyword", "self_check", "perplexity"]
BASELINE_NAMES: tuple[BaselineName, ...] = ("keyword", "self_check", "perplexity")
BEHAVIOURS = ("refused-harmful", "accepted-harmful", "accepted-harmless", "refused-harmless")
_VIEWS = ("t_inst", "content_mean", "t_post_inst")
_CHUNK = 64

_BASELINE_TITLES = {
    "keyword": "keyword judge on the host's answer",
    "self_check": "prompted self-check (Yes/No log-odds)",
    "perplexity": "perplexity heuristic (prefix/suffix)",
}


class EvalSettings(BaseModel):
    """What an evaluation runs and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baselines: tuple[BaselineName, ...] = Field(default=BASELINE_NAMES, description="Baselines run on the host.")
    max_new_tokens: int = Field(default=32, ge=1, le=4096,
                                description="Greedy tokens of the host's answer read by the keyword judge.")
    behaviour_system_prompt: str | None = Field(
        default=SAFETY_SYSTEM_PROMPT,
        description="System prompt the host answers under for the keyword judge / behaviour labels "
                    "(None: no system prompt; most small hosts then refuse nothing).")
    self_check_prompt: str = Field(default=SELF_CHECK_PROMPT, description="Self-check question with '{text}'.")
    perplexity_fpr: float = Field(default=0.05, gt=0.0, lt=1.0,
                                  description="Perplexity threshold: this false-positive rate on the reference "
                                              "harmless prompts.")
    fprs: tuple[float, ...] = Field(default=(0.01, 0.05), description="FPRs at which the TPR is reported.")
    batch_size: int = Field(default=16, ge=1, le=4096, description="Prompts per forward pass.")
    pca_layer: int | None = Field(default=None, ge=0,
                                  description="Residual layer of the PCA plots (None: the first guard's middle "
                                              "layer read, or two thirds of the depth).")
    progress: bool = Field(default=True, description="Show progress bars.")


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
    ``(n,)`` bool, the host's own refusals (keyword judge), when that baseline ran.
    """

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
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


def metrics_for(pos: np.ndarray, neg: np.ndarray, threshold: float, fprs: Sequence[float] = (0.01, 0.05)
                ) -> Metrics:
    """:class:`Metrics` of scores ``pos`` ``(n_harmful,)`` and ``neg`` ``(n_harmless,)``; flagged iff ≥ threshold."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.asarray(neg, dtype=np.float64).ravel()
    counts = confusion(pos >= threshold, neg >= threshold)
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
                 fprs: Sequence[float]) -> RuleReport:
    rates = []
    for s in sets:
        values = scores[s.name]
        flagged = int((values >= threshold).sum())
        rates.append(SetRate(set=s.name, label=s.label, n=len(values), flagged=flagged,
                             rate=(flagged if s.harmful else len(values) - flagged) / max(1, len(values)),
                             mean_score=float(np.mean(values)) if len(values) else math.nan,
                             truncated=truncated.get(s.name, 0)))

    def pool(chosen: Sequence[EvalSet]) -> Metrics:
        pos = [scores[s.name] for s in chosen if s.harmful]
        neg = [scores[s.name] for s in chosen if not s.harmful]
        return metrics_for(np.concatenate(pos) if pos else np.zeros(0), np.concatenate(neg) if neg else np.zeros(0),
                           threshold, fprs)

    groups: dict[str, list[EvalSet]] = {}
    for s in sets:
        if s.group is not None:
            groups.setdefault(s.group, []).append(s)
    return RuleReport(name=name, kind=kind, description=description, threshold=threshold, sets=rates,
                      overall=pool(sets),
                      groups={g: pool(members) for g, members in groups.items() if len(members) > 1})


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
                label: str, progress: bool, batch_size: int) -> dict[str, np.ndarray]:
    """Scores of ``names`` plus per-layer cosine scores and PCA states, from one read of all layers."""
    first = guards[names[0]]
    num_layers = first.host.num_blocks + 1
    layers = list(range(num_layers))
    encodings = [first.encode(text) for text in texts]
    out: dict[str, list[np.ndarray]] = {f"score:{n}": [] for n in names}
    out.update({"layer_scores": [], "pca_inst": [], "pca_post": [], "truncated": []})
    centroids = first.fitted.centroids
    chunks = [encodings[start:start + _CHUNK] for start in range(0, len(encodings), _CHUNK)]
    for chunk in tqdm(chunks, desc=f"{label}: hidden states", disable=not progress, unit="chunk"):
        with first.host.lock:
            states = first.states(chunk, layers=layers, which=_VIEWS).double()     # (n, 3, L+1, d)
        for name in names:
            guard = guards[name]
            views = [_VIEWS.index(v) for v in guard.views]
            picked = states[:, views][:, :, list(guard.layers)]                   # (n, views, layers, d)
            out[f"score:{name}"].append(guard.fitted.scorer.score(picked).score.numpy())
        out["layer_scores"].append(
            cosine_scores(states[:, 0][:, list(centroids.layers)], centroids.harmful, centroids.harmless).numpy())
        out["pca_inst"].append(states[:, 0, pca_layer].float().numpy())
        out["pca_post"].append(states[:, 2, pca_layer].float().numpy())
        out["truncated"].append(np.array([e.truncated for e in chunk], dtype=bool))
    return {key: np.concatenate(values) for key, values in out.items()}


def _default_pca_layer(guards: Mapping[str, LatentGuard]) -> int:
    for guard in guards.values():
        if guard.mode == "tuned":
            return int(guard.layers[len(guard.layers) // 2])
    first = next(iter(guards.values()))
    return round(2 * first.host.num_blocks / 3)


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
    host = next(iter(guards.values())).host
    for name, guard in guards.items():
        if guard.host is not host and guard.fingerprint != next(iter(guards.values())).fingerprint:
            raise InputError(f"guard {name!r} runs on another host; evaluate guards of one host together")
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
    groups = _guard_groups(guards)
    identities = {name: guard_identity(guard) for name, guard in guards.items()}
    for s in sets:
        for index, group in enumerate(groups):
            key = content_key("guards", host_id, [(n, identities[n]) for n in group], pca_layer, list(s.texts))

            def read(group: list[str] = group, s: EvalSet = s) -> dict[str, np.ndarray]:
                return _guard_pass(guards, group, s.texts, pca_layer, s.name, cfg.progress, cfg.batch_size)

            arrays = store.arrays(key, read)
            for name in group:
                data.scores.setdefault(name, {})[s.name] = arrays[f"score:{name}"]
                truncated.setdefault(name, {})[s.name] = int(arrays["truncated"].sum())
            if index == 0:
                data.layer_scores[s.name] = arrays["layer_scores"]
                data.pca_inst[s.name] = arrays["pca_inst"]
                data.pca_post[s.name] = arrays["pca_post"]
    for name, guard in guards.items():
        data.thresholds[name] = guard.threshold

    reference_count: int | None = None
    for baseline in cfg.baselines:
        data.scores[baseline] = {}
        truncated[baseline] = {}
        if baseline == "keyword":
            judge = PhraseJudge()
            data.thresholds[baseline] = 0.5
            for s in sets:
                key = content_key("replies", host_id, cfg.behaviour_system_prompt, cfg.max_new_tokens,
                                  list(REFUSAL_PHRASES), list(s.texts))

                def answer(s: EvalSet = s) -> dict[str, list[str] | list[bool]]:
                    replies, cut = host_replies(host, s.texts, system_prompt=cfg.behaviour_system_prompt,
                                                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                                progress=f"{s.name}: host answers" if cfg.progress else False)
                    return {"replies": replies, "truncated": cut}

                value = store.json(key, answer)
                data.replies[s.name] = list(value["replies"])
                data.scores[baseline][s.name] = keyword_judge_scores(value["replies"], judge)
                data.refused[s.name] = data.scores[baseline][s.name] > 0.5
                truncated[baseline][s.name] = int(sum(value["truncated"]))
        elif baseline == "self_check":
            data.thresholds[baseline] = 0.0
            for s in sets:
                key = content_key("self_check", host_id, cfg.self_check_prompt, list(s.texts))

                def run(s: EvalSet = s) -> dict[str, np.ndarray]:
                    score, cut = self_check_scores(host, s.texts, prompt=cfg.self_check_prompt,
                                                   batch_size=cfg.batch_size,
                                                   progress=f"{s.name}: self-check" if cfg.progress else False)
                    return {"score": score, "truncated": np.array(cut, dtype=bool)}

                arrays = store.arrays(key, run)
                data.scores[baseline][s.name] = arrays["score"]
                truncated[baseline][s.name] = int(arrays["truncated"].sum())
        else:
            reference = list(reference_harmless) if reference_harmless is not None else \
                [r.text for r in read_calibration_sets()[1]]
            if not reference:
                raise InputError("the perplexity heuristic needs harmless reference prompts for its threshold")
            reference_count = len(reference)
            key = content_key("perplexity", host_id, reference)

            def perplexity(texts: Sequence[str], label: str) -> dict[str, np.ndarray]:
                return {"score": perplexity_scores(host, texts, batch_size=cfg.batch_size,
                                                   progress=label if cfg.progress else False)}

            ref_scores = store.arrays(key, lambda r=reference: perplexity(r, "perplexity reference"))["score"]  # type: ignore[misc]
            data.thresholds[baseline] = threshold_at_fpr(ref_scores, cfg.perplexity_fpr)
            for s in sets:
                key = content_key("perplexity", host_id, list(s.texts))
                arrays = store.arrays(key, lambda s=s: perplexity(s.texts, f"{s.name}: perplexity"))  # type: ignore[misc]
                data.scores[baseline][s.name] = arrays["score"]
                truncated[baseline][s.name] = 0

    rules = []
    for name, guard in guards.items():
        description = f"latent guard, {guard.mode} mode, layers {guard.layers[0]}–{guard.layers[-1]}" \
            if len(guard.layers) > 1 else f"latent guard, {guard.mode} mode, layer {guard.layers[0]}"
        rules.append(_rule_report(name, "guard", description, data.thresholds[name], data.scores[name], sets,
                                  truncated[name], cfg.fprs))
    for baseline in cfg.baselines:
        rules.append(_rule_report(baseline, "baseline", _BASELINE_TITLES[baseline], data.thresholds[baseline],
                                  data.scores[baseline], sets, truncated[baseline], cfg.fprs))

    behaviour = None
    if data.refused:
        behaviour = {}
        for s in sets:
            refused = int(data.refused[s.name].sum())
            accepted = len(s.texts) - refused
            behaviour[s.name] = ({"refused-harmful": refused, "accepted-harmful": accepted} if s.harmful
                                 else {"accepted-harmless": accepted, "refused-harmless": refused})
    pos = [data.layer_scores[s.name] for s in sets if s.harmful]
    neg = [data.layer_scores[s.name] for s in sets if not s.harmful]
    separation = None
    if pos and neg:
        p, q = np.concatenate(pos), np.concatenate(neg)
        separation = {layer: auroc(p[:, layer], q[:, layer]) for layer in range(p.shape[1])}
    else:
        notes.append("per-layer separation needs harmful and harmless sets.")
    for rule in rules:
        notes.extend(f"{rule.name}: {note}" for note in rule.overall.notes if rule.kind == "guard")
    if cfg.behaviour_system_prompt is not None and "keyword" in cfg.baselines:
        notes.append("the keyword judge reads the host's answers under the safety system prompt "
                     f"{cfg.behaviour_system_prompt!r}; the guards read the prompts as they were calibrated.")
    report = EvalReport(
        host=host.name, host_fingerprint=host_id, settings=cfg,
        sets=[SetInfo(name=s.name, label=s.label, n=len(s.texts), source=s.source, group=s.group,
                      truncated=max((truncated[n].get(s.name, 0) for n in guards), default=0)) for s in sets],
        rules=rules, leakage=leakage, behaviour=behaviour, layer_separation=separation, pca_layer=pca_layer,
        guard_layers={name: list(guard.layers) for name, guard in guards.items()},
        perplexity_reference=reference_count, notes=notes, cache_hits=store.hits, cache_misses=store.misses,
        seconds=round(time.perf_counter() - started, 2),
    )
    if any(s.truncated for s in report.sets):
        warnings.warn("some prompts were longer than the context and were cut from the left "
                      "(see the 'truncated' counts)", UserWarning, stacklevel=2)
    return EvalResult(report=report, data=data, sets=list(sets))
