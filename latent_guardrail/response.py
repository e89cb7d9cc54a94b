"""The response scorer: is an answer harmful, judged from the host's states at the answer's own tokens.

Fitted like the pooled input scorer (:mod:`latent_guardrail.pooled`): a shrinkage-LDA read-out per layer on a
window of layers, chosen — with the response view (:data:`latent_guardrail.answers.RESPONSE_VIEWS`: ``last``,
``mean``, ``ends``) and the shrinkage — by **leave-one-family-out** cross-validated AUROC of the answers' pooled
scores, then Platt-calibrated on the out-of-fold scores. A row is one reading of the view (a check point or a
sentence end) and carries its answer's label; an answer's score is the **max over its rows**, which is exactly
what a streaming check does when it stops at the first check point that crosses the threshold.

Labels (the calibration pairs): 1 = the host complied with a harmful request; 0 = anything else the host (or a
written text) says: a refusal to a harmful request, an answer to a harmless one.

**Two read-outs, both must agree** (when the pairs say which label-0 answers are refusals): "the host went along
with a harmful request" is a conjunction, and one linear read-out learns the easy half of it — the label-0 class
is mostly refusals, so a single direction becomes "not a refusal" and flags every harmless answer on a sensitive
topic. So the scorer fits a *compliance* read-out (compliant answers vs refusals) and a *harm* read-out
(compliant answers vs answers to harmless prompts, look-alikes on the same topics included), each
Platt-calibrated on its own two kinds of answer, and a row's score is the **minimum** of the two calibrated
log-odds: flagged only when the answer both goes along (not a refusal) and reads as the harmful side of its
topic. The threshold defaults to log-odds 0 (both read-outs past their own midpoints).

Shapes: a :class:`ResponseScorer` reads rows ``(rows, len(layers), d)``. Everything is computed in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .answers import RESPONSE_VIEWS
from .centroids import _platt
from .errors import CalibrationError, NumericalError
from .metrics import auroc, threshold_at_fpr
from .pooled import _Scatter

__all__ = ["REFUSAL_KINDS", "PromptPart", "ResponseGate", "ResponseOptions", "ResponseScore", "ResponseScorer",
           "ResponseTracker", "fit_response"]

_F64 = torch.float64
DEFAULT_EVERY = 8
"""Default check spacing of the ``last`` and ``mean`` views (answer tokens)."""


@dataclass(frozen=True)
class ResponseScore:
    """One answer's score: ``score`` (calibrated log-odds, max over rows), ``row`` the deciding row,
    ``layer_scores`` ``(layers,)`` at that row (their mean is the score)."""

    score: float
    row: int
    layer_scores: tuple[float, ...]


def _project(x: torch.Tensor, midpoints: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per-layer read-out ``(..., layers)`` of float64 states ``(..., layers, d)``: ``(x − m_l) · w_l``."""
    return ((x - midpoints.to(_F64)) * directions.to(_F64)).sum(-1)


@dataclass(frozen=True)
class PromptPart:
    """The prompt's share of the harm read-out: a read-out of the prompt's state at ``t_inst`` on the scorer's
    layers (``directions`` / ``midpoints`` ``(layers, d)``, its ``shrinkage``), mixed into the answer's raw
    score with ``weight``: ``(1 − weight) · answer + weight · prompt``. The prompt's state is computed by the
    same pass that writes (or reads) the answer: the prefill in guarded generation, the one pass over prompt +
    answer in :meth:`~latent_guardrail.guard.LatentGuard.check_response`."""

    directions: torch.Tensor
    midpoints: torch.Tensor
    weight: float
    shrinkage: float = 0.5

    def scores(self, prompt: torch.Tensor) -> torch.Tensor:
        """Per-layer raw scores ``(layers,)`` of the prompt's float64 state ``(layers, d)``."""
        return _project(prompt, self.midpoints, self.directions)


@dataclass(frozen=True)
class ResponseGate:
    """The second read-out of a two-read-out scorer (the *harm* read-out: compliant answers vs answers to harmless
    prompts), on the scorer's layers: ``directions`` / ``midpoints`` ``(layers, d)``, its own Platt
    ``calibration`` and ``shrinkage``; ``prompt``: the prompt state's share of it (None: the answer alone)."""

    directions: torch.Tensor
    midpoints: torch.Tensor
    calibration: tuple[float, float]
    shrinkage: float = 0.5
    prompt: PromptPart | None = None

    def layer_scores(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row, per-layer log-odds ``(rows, layers)`` of float64 states ``(rows, layers, d)``; ``prompt``
        ``(layers, d)`` the prompt's state (required when the gate has a prompt part, ignored otherwise)."""
        a, b = self.calibration
        raw = _project(x, self.midpoints, self.directions)
        if self.prompt is not None:
            if prompt is None:
                raise ValueError("this response scorer's harm read-out also reads the prompt's state: pass it")
            raw = (1.0 - self.prompt.weight) * raw + self.prompt.weight * self.prompt.scores(prompt.to(_F64))
        return a * raw + b


class ResponseScorer:
    """Shrinkage-LDA per layer on answer-token states, max-pooled over a response view's rows, Platt-calibrated.

    Row score ``s_r = a · mean_l (h_rl − m_l) · w_l + b``; with a :class:`ResponseGate` (the harm read-out) the
    row score is ``min(s_r, g_r)``, ``g_r`` the gate's score on the same row. The answer's score is ``max_r``.
    """

    mode = "response"
    tensor_prefix = "response."

    def __init__(self, layers: Sequence[int], directions: torch.Tensor, midpoints: torch.Tensor,
                 calibration: tuple[float, float], threshold: float, *, view: str = "last",
                 every: int = DEFAULT_EVERY, shrinkage: float = 0.5, gate: ResponseGate | None = None) -> None:
        self.layers = tuple(int(x) for x in layers)
        self.directions = directions.to(_F64)          # (layers, d)
        self.midpoints = midpoints.to(_F64)            # (layers, d)
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.threshold = float(threshold)
        self.view = str(view)
        self.every = int(every)
        self.shrinkage = float(shrinkage)
        part = None if gate is None or gate.prompt is None else PromptPart(
            gate.prompt.directions.to(_F64), gate.prompt.midpoints.to(_F64), float(gate.prompt.weight),
            float(gate.prompt.shrinkage))
        self.gate = None if gate is None else ResponseGate(
            gate.directions.to(_F64), gate.midpoints.to(_F64),
            (float(gate.calibration[0]), float(gate.calibration[1])), float(gate.shrinkage), part)

    @property
    def reads_prompt(self) -> bool:
        """True when the harm read-out also reads the prompt's state at ``t_inst`` (pass it to :meth:`score`)."""
        return self.gate is not None and self.gate.prompt is not None

    def _checked(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.dim() != 3 or rows.shape[1:] != self.directions.shape:
            raise ValueError(f"rows must be (rows, {len(self.layers)}, {self.directions.shape[-1]}), "
                             f"got {tuple(rows.shape)}")
        x = rows.to(_F64)
        if not torch.isfinite(x).all():
            raise NumericalError("hidden states contain NaN or inf")
        return x

    def row_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-row, per-layer log-odds ``(rows, layers)`` of the (compliance) read-out, states ``(rows, layers, d)``."""
        x = self._checked(rows)
        a, b = self.calibration
        return a * _project(x, self.midpoints, self.directions) + b

    def score(self, rows: torch.Tensor, prompt: torch.Tensor | None = None) -> ResponseScore:
        """The answer's score from its view rows ``(rows, layers, d)`` (at least one row) and, when the scorer
        :attr:`reads_prompt`, the prompt's state at ``t_inst`` ``(layers, d)`` (ValueError when it is missing).

        ``layer_scores`` are those of the read-out that decided the deciding row (the lower one with a gate).
        """
        if rows.dim() != 3 or rows.shape[0] < 1:
            raise ValueError(f"an answer needs at least one row of states, got shape {tuple(rows.shape)}")
        per = self.row_scores(rows)                                    # (rows, layers)
        if self.gate is not None:
            if prompt is not None and tuple(prompt.shape) != tuple(self.directions.shape):
                raise ValueError(f"the prompt state must be {tuple(self.directions.shape)}, got {tuple(prompt.shape)}")
            if prompt is not None and not torch.isfinite(prompt).all():
                raise NumericalError("hidden states contain NaN or inf")
            gated = self.gate.layer_scores(rows.to(_F64), prompt)      # (rows, layers)
            per = torch.where((gated.mean(-1) < per.mean(-1)).unsqueeze(-1), gated, per)
        pooled = per.mean(-1)
        row = int(pooled.argmax())
        return ResponseScore(float(pooled[row]), row, tuple(float(x) for x in per[row]))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        p = self.tensor_prefix
        out = {f"{p}directions": self.directions.float(), f"{p}midpoints": self.midpoints.float()}
        if self.gate is not None:
            out.update({f"{p}gate_directions": self.gate.directions.float(),
                        f"{p}gate_midpoints": self.gate.midpoints.float()})
            if self.gate.prompt is not None:
                out.update({f"{p}gate_prompt_directions": self.gate.prompt.directions.float(),
                            f"{p}gate_prompt_midpoints": self.gate.prompt.midpoints.float()})
        return out

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "layers": list(self.layers), "view": self.view,
                               "view_rule": RESPONSE_VIEWS.get(self.view, ""), "every": self.every,
                               "threshold": self.threshold, "calibration": list(self.calibration),
                               "shrinkage": self.shrinkage}
        if self.gate is not None:
            out["gate"] = {"calibration": list(self.gate.calibration), "shrinkage": self.gate.shrinkage,
                           "combine": "min"}
            if self.gate.prompt is not None:
                out["gate"]["prompt"] = {"position": "t_inst", "weight": self.gate.prompt.weight,
                                         "shrinkage": self.gate.prompt.shrinkage}
        return out

    def validate(self, hidden_size: int) -> None:
        """View, spacing, tensor shapes and numbers fit (ValueError otherwise)."""
        if self.view not in RESPONSE_VIEWS:
            raise ValueError(f"unknown response view {self.view!r}: use one of {', '.join(RESPONSE_VIEWS)}")
        if self.every < 1:
            raise ValueError(f"the response check spacing must be >= 1 token, got {self.every}")
        shape = (len(self.layers), hidden_size)
        for name, value in (("directions", self.directions), ("midpoints", self.midpoints)):
            if tuple(value.shape) != shape:
                raise ValueError(f"tensor {self.tensor_prefix + name!r} has shape {tuple(value.shape)}, "
                                 f"expected {shape}")
        if not self.layers:
            raise ValueError("the response scorer reads no layer")
        if not all(math.isfinite(x) for x in (self.threshold, *self.calibration)):
            raise ValueError("the response scorer's threshold and calibration must be finite")
        if self.gate is not None:
            tensors = [("gate_directions", self.gate.directions), ("gate_midpoints", self.gate.midpoints)]
            if self.gate.prompt is not None:
                tensors += [("gate_prompt_directions", self.gate.prompt.directions),
                            ("gate_prompt_midpoints", self.gate.prompt.midpoints)]
                if not 0.0 <= self.gate.prompt.weight <= 1.0:
                    raise ValueError(f"the prompt part's weight must be in [0, 1], got {self.gate.prompt.weight}")
            for name, value in tensors:
                if tuple(value.shape) != shape:
                    raise ValueError(f"tensor {self.tensor_prefix + name!r} has shape {tuple(value.shape)}, "
                                     f"expected {shape}")
            if not all(math.isfinite(x) for x in self.gate.calibration):
                raise ValueError("the response gate's calibration must be finite")

    @classmethod
    def from_tensors(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> ResponseScorer:
        """The scorer of ``config()`` and ``to_tensors()`` (KeyError when a part is missing; ValueError when the
        stored view rule is not the one this version applies)."""
        p = cls.tensor_prefix
        view = str(config["view"])
        rule = config.get("view_rule")
        if rule is not None and view in RESPONSE_VIEWS and rule != RESPONSE_VIEWS[view]:
            raise ValueError(f"the response view {view!r} was fitted as {rule!r}; this latent-guardrail reads it as "
                             f"{RESPONSE_VIEWS[view]!r} — refit the response scorer")
        gate_config = config.get("gate")  # absent in parts fitted before the gate existed: one read-out
        gate = None
        if gate_config is not None:
            if not isinstance(gate_config, Mapping) or gate_config.get("combine", "min") != "min":
                raise ValueError(f"the response gate {gate_config!r} is not one this latent-guardrail reads")
            part_config = gate_config.get("prompt")  # absent in parts fitted before it existed: the answer alone
            part = None
            if part_config is not None:
                if not isinstance(part_config, Mapping) or part_config.get("position") != "t_inst":
                    raise ValueError(f"the response gate's prompt part {part_config!r} is not one this "
                                     "latent-guardrail reads")
                part = PromptPart(tensors[f"{p}gate_prompt_directions"], tensors[f"{p}gate_prompt_midpoints"],
                                  float(part_config["weight"]), float(part_config.get("shrinkage", 0.5)))
            gate = ResponseGate(tensors[f"{p}gate_directions"], tensors[f"{p}gate_midpoints"],
                                tuple(gate_config["calibration"]), float(gate_config.get("shrinkage", 0.5)), part)
        return cls(config["layers"], tensors[f"{p}directions"], tensors[f"{p}midpoints"],
                   tuple(config["calibration"]), float(config["threshold"]), view=view,
                   every=int(config["every"]), shrinkage=float(config.get("shrinkage", 0.5)), gate=gate)


class ResponseTracker:
    """The response scorer's reading of an answer while it is generated, one token state at a time.

    :meth:`add` takes the state ``(layers, d)`` of the next answer token and whether that token ends a sentence;
    it returns the answer's score so far when this token is a check point of the scorer's view (``last`` /
    ``mean``: every ``every``-th token; ``ends``: a sentence end), else None. :meth:`final` scores the last
    token seen (the answer's end is always a check point). ``best`` is the highest score so far. ``prompt``:
    the prompt's state at ``t_inst`` ``(layers, d)``, required when the scorer :attr:`~ResponseScorer.reads_prompt`.
    """

    def __init__(self, scorer: ResponseScorer, prompt: torch.Tensor | None = None) -> None:
        if scorer.reads_prompt and prompt is None:
            raise ValueError("this response scorer also reads the prompt's state at t_inst: pass it to the tracker")
        self.scorer = scorer
        self.prompt = None if prompt is None else prompt.to(_F64)
        self.count = 0
        self.best: ResponseScore | None = None
        self._sum: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._checked_at = -1

    def _reading(self) -> torch.Tensor:
        assert self._last is not None and self._sum is not None
        return self._sum / self.count if self.scorer.view == "mean" else self._last

    def _check(self) -> ResponseScore:
        scored = self.scorer.score(self._reading().unsqueeze(0), self.prompt)
        scored = ResponseScore(scored.score, self.count - 1, scored.layer_scores)
        if self.best is None or scored.score > self.best.score:
            self.best = scored
        self._checked_at = self.count
        return scored

    def add(self, state: torch.Tensor, end: bool) -> ResponseScore | None:
        """Take the next answer token's state ``(layers, d)``; the score when it is a check point, else None."""
        x = state.to(_F64)
        self._sum = x.clone() if self._sum is None else self._sum + x
        self._last = x
        self.count += 1
        due = end if self.scorer.view == "ends" else self.count % self.scorer.every == 0
        return self._check() if due else None

    def final(self) -> ResponseScore | None:
        """Score the last token seen unless it was just checked; None when no token was seen."""
        if self.count == 0:
            return None
        if self._checked_at != self.count:
            self._check()
        return self.best


# ----------------------------------------------------------------------------------------------- fitting

REFUSAL_KINDS = frozenset({"refusal", "written_refusal"})
"""Answer kinds that are refusals of a harmful request (the compliance read-out's label-0 side)."""


@dataclass(frozen=True)
class ResponseOptions:
    """Knobs of the response scorer (chosen by cross-validation unless fixed).

    Attributes:
        num_layers: layers combined (a contiguous window of the layers read).
        shrinkage: candidate shrinkage strengths γ (of each read-out).
        views: candidate response views.
        target_fpr: None (default): the threshold is log-odds 0. A fraction: the threshold lets at most this
            fraction of the out-of-fold label-0 answers be flagged (never below log-odds 0).
        every: check spacing of the ``last`` / ``mean`` views (tokens).
        gate: fit the two read-outs (compliance and harm, combined by min) when the answers' kinds say which
            label-0 answers are refusals; False: one read-out for all label-0 answers.
        prompt_weights: candidate weights of the prompt's state at ``t_inst`` in the harm read-out (0: the answer
            alone), chosen with the rest when the fit is given the prompts' states (without them, or without a
            harm read-out, the answer alone).
    """

    num_layers: int = 4
    shrinkage: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8)
    views: tuple[str, ...] = tuple(RESPONSE_VIEWS)
    target_fpr: float | None = None
    every: int = DEFAULT_EVERY
    gate: bool = True
    prompt_weights: tuple[float, ...] = (0.0, 0.5)


def _pool_max(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    best = np.full(n, -np.inf)
    np.maximum.at(best, owner, values)
    return best


@dataclass
class _ReadOut:
    """One read-out's out-of-fold row scores ``(gammas, R, layers)`` and full-fit directions per layer, fitted on
    the rows of ``subset`` (label 1 against the label-0 rows in it)."""

    subset: np.ndarray                                   # (n_answers,) bool: the answers it is fitted on
    oof: np.ndarray
    finals: list[tuple[list[torch.Tensor], torch.Tensor]]


def _read_out(rows: torch.Tensor, row_label: np.ndarray, row_group: np.ndarray, n_groups: int, owner: np.ndarray,
              subset: np.ndarray, gammas: list[float]) -> _ReadOut:
    """Leave-one-family-out scores of every row ``(R, layers, d)`` from a read-out fitted on ``subset``'s rows."""
    mask = subset[owner]
    oof = np.zeros((len(gammas), rows.shape[0], rows.shape[1]))
    finals = []
    keep = torch.from_numpy(mask)
    for j in range(rows.shape[1]):
        x = rows[:, j]
        scatter = _Scatter(x[keep], row_label[mask], row_group[mask], n_groups)
        for g in range(n_groups):
            test = row_group == g
            if not test.any():
                continue
            ws, mid = scatter.directions(gammas, g)
            held = x[torch.from_numpy(test)] - mid
            for k, w in enumerate(ws):
                oof[k, test, j] = (held @ w).numpy()
        finals.append(scatter.directions(gammas, None))
    return _ReadOut(subset, oof, finals)


def _calibrated(rows: np.ndarray, subset: np.ndarray, owner: np.ndarray, labels: np.ndarray
                ) -> tuple[np.ndarray, tuple[float, float]]:
    """Calibrated row scores ``(R,)`` of raw row scores ``(R,)``, Platt-fitted on the max-pooled scores of the
    read-out's own answers (``subset``)."""
    pooled = _pool_max(rows, owner, labels.shape[0])
    with np.errstate(over="ignore"):  # a read-out that separates its two kinds perfectly: a steep, finite fit
        a, b = _platt(pooled[subset], labels[subset].astype(float))
    return a * rows + b, (a, b)


def fit_response(views: Mapping[str, Sequence[torch.Tensor]], labels: np.ndarray, groups: np.ndarray,
                 layers: Sequence[int], options: ResponseOptions | None = None,
                 kinds: Sequence[str] | None = None, prompts: Sequence[torch.Tensor] | None = None
                 ) -> tuple[ResponseScorer, dict[str, Any]]:
    """Fit the response scorer.

    Args:
        views: per response view, per answer, its rows ``(rows, len(layers), d)`` (as
            :func:`latent_guardrail.answers.read_answer_states` returns them).
        labels: ``(n_answers,)`` 1 = compliant answer to a harmful request, 0 = any other answer.
        groups: ``(n_answers,)`` family ids; cross-validation leaves one family out at a time.
        layers: the residual layers of the rows.
        kinds: ``(n_answers,)`` what each answer is; label-0 answers of a kind in :data:`REFUSAL_KINDS` are the
            compliance read-out's other side, the rest the harm read-out's (two read-outs, combined by min, when
            each side has at least 4 answers and ``options.gate``); None: one read-out.
        prompts: per answer, its prompt's state at ``t_inst`` ``(len(layers), d)``: the harm read-out may also
            read it (its weight among ``options.prompt_weights``, chosen by the same cross-validation); None: the
            answer alone.

    Returns:
        (scorer, report): the report holds the leave-one-family-out AUROC of the best candidates, the choice,
        the out-of-fold detection / pass rates at the threshold, and per-view / per-layer AUROCs.
    """
    opts = options if options is not None else ResponseOptions()
    labels = np.asarray(labels).astype(int)
    n = labels.shape[0]
    if min((labels == 1).sum(), (labels == 0).sum()) < 4:
        raise CalibrationError("the response scorer needs at least 4 answers of each label")
    names = [view for view in opts.views if view in views]
    if not names:
        raise CalibrationError(f"none of the views {opts.views} was read")
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_index.max()) + 1
    if n_groups < 2:
        raise CalibrationError("leave-one-family-out needs at least 2 families")
    refused = np.zeros(n, dtype=bool) if kinds is None else np.isin(np.asarray(kinds, dtype=object),
                                                                     list(REFUSAL_KINDS))
    if kinds is not None and len(kinds) != n:
        raise ValueError(f"{len(kinds)} kinds for {n} answers")
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompt states for {n} answers")
    other = (labels == 0) & ~refused
    gated = opts.gate and min(int(refused.sum()), int(other.sum())) >= 4
    subsets = ([(labels == 1) | refused, (labels == 1) | other] if gated else [np.ones(n, dtype=bool)])
    gammas = list(opts.shrinkage)
    window = max(1, min(opts.num_layers, len(layers)))
    prompt_read = None  # the prompt states' harm read-out: one row per answer
    weights = sorted({float(w) for w in opts.prompt_weights})
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"prompt weights must be in [0, 1], got {opts.prompt_weights}")
    if gated and prompts is not None and any(weights):
        prompt_read = _read_out(torch.stack(list(prompts)).to(_F64), labels, group_index, n_groups, np.arange(n),
                                subsets[1], gammas)
    mixes = [(w, kp) for w in weights if w and prompt_read is not None for kp in range(len(gammas))]
    if 0.0 in weights or not mixes:  # without the prompts' states the answer alone is the one candidate
        mixes.insert(0, (0.0, 0))
    best: tuple[float, str, tuple[int, ...], int, tuple[float, int], np.ndarray, list[tuple[float, float]]] | None
    best = None
    candidates: list[dict[str, Any]] = []
    per_layer: dict[str, list[float]] = {}
    reads: dict[str, tuple[list[_ReadOut], np.ndarray]] = {}
    for view in names:
        per_answer = list(views[view])
        if len(per_answer) != n:
            raise ValueError(f"view {view!r} has {len(per_answer)} answers, labels {n}")
        owner = np.concatenate([np.full(t.shape[0], i) for i, t in enumerate(per_answer)])
        rows = torch.cat(list(per_answer)).to(_F64)                          # (R, layers, d)
        row_label, row_group = labels[owner], group_index[owner]
        outs = [_read_out(rows, row_label, row_group, n_groups, owner, subset, gammas) for subset in subsets]
        reads[view] = (outs, owner)
        middle = len(gammas) // 2  # per layer (the plot): min of the read-outs' raw out-of-fold scores
        per_layer[view] = [auroc(*_split(_pool_max(np.minimum.reduce([o.oof[middle, :, j] for o in outs]), owner, n),
                                         labels)) or 0.5 for j in range(len(layers))]
        for ks in itertools.product(range(len(gammas)), repeat=len(outs)):
            for start in range(len(layers) - window + 1):
                raw = [o.oof[k, :, start:start + window].mean(axis=1) for o, k in zip(outs, ks, strict=True)]
                first = _calibrated(raw[0], outs[0].subset, owner, labels)
                for weight, kp in mixes if gated else [(0.0, 0)]:
                    parts = [first]
                    if gated:
                        harm = raw[1] if not weight else (1.0 - weight) * raw[1] + weight * (
                            prompt_read.oof[kp, :, start:start + window].mean(axis=1)[owner])  # type: ignore[union-attr]
                        parts.append(_calibrated(harm, outs[1].subset, owner, labels))
                    scores = _pool_max(np.minimum.reduce([p[0] for p in parts]), owner, n)
                    value = auroc(*_split(scores, labels)) or 0.5
                    candidates.append({"view": view, "shrinkage": [gammas[k] for k in ks], "auroc": value,
                                       "layers": [int(x) for x in layers[start:start + window]],
                                       "prompt_weight": weight})
                    if best is None or value > best[0] + 1e-4:
                        best = (value, view, ks, start, (weight, kp), scores, [p[1] for p in parts])
    assert best is not None
    cv_auc, view, ks, start, (weight, kp), logit, calibrations = best
    threshold = 0.0 if opts.target_fpr is None else max(0.0, threshold_at_fpr(logit[labels == 0], opts.target_fpr))
    chosen = list(range(start, start + window))
    outs = reads[view][0]

    def stacked(read: _ReadOut, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([read.finals[j][0][k] for j in chosen]), torch.stack([read.finals[j][1] for j in chosen]))

    dirs, mids = stacked(outs[0], ks[0])
    gate = None
    if gated:
        gate_dirs, gate_mids = stacked(outs[1], ks[1])
        part = None
        if weight:
            assert prompt_read is not None
            part = PromptPart(*stacked(prompt_read, kp), weight, gammas[kp])
        gate = ResponseGate(gate_dirs, gate_mids, calibrations[1], gammas[ks[1]], part)
    scorer = ResponseScorer([layers[j] for j in chosen], dirs, mids, calibrations[0], threshold, view=view,
                            every=opts.every, shrinkage=gammas[ks[0]], gate=gate)
    by_group = {}
    for g in np.unique(np.asarray(groups)):
        mask = np.asarray(groups) == g
        by_group[str(g)] = {"n": int(mask.sum()), "compliant": int((labels[mask] == 1).sum()),
                            "flagged": float((logit[mask] >= threshold).mean())}
    best_by_view = {name: max((c["auroc"] for c in candidates if c["view"] == name), default=0.5) for name in names}
    report: dict[str, Any] = {
        "cv": "leave-one-family-out", "groups": n_groups, "answers": n, "compliant": int((labels == 1).sum()),
        "read_outs": "compliance (vs refusals) and harm (vs harmless answers), min" if gated else "one",
        "cv_auroc": cv_auc, "view": view, "shrinkage": gammas[ks[0]], "layers": list(scorer.layers),
        "every": opts.every, "threshold_rule": "log-odds 0" if opts.target_fpr is None else
        f"{opts.target_fpr:.0%} out-of-fold false stops",
        "cv_auroc_by_view": best_by_view, "cv_auroc_by_layer": {v: dict(zip([int(x) for x in layers], aucs,
                                                                            strict=True))
                                                                for v, aucs in per_layer.items()},
        "candidates_top": sorted(candidates, key=lambda c: -c["auroc"])[:8],
        "heldout_detect_rate": float((logit[labels == 1] >= threshold).mean()),
        "heldout_pass_rate": float((logit[labels == 0] < threshold).mean()),
        "heldout_by_group": by_group,
    }
    if gated:
        report["gate_shrinkage"] = gammas[ks[1]]
        report["prompt_weight"] = weight
        if prompt_read is not None:
            report["cv_auroc_prompt_weight"] = {str(w): max(c["auroc"] for c in candidates if c["prompt_weight"] == w)
                                                for w in sorted({c["prompt_weight"] for c in candidates})}
        report["heldout_pass_rate_by_side"] = {"refusals": float((logit[refused] < threshold).mean()),
                                               "other": float((logit[other] < threshold).mean())}
    return scorer, report


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return scores[labels == 1], scores[labels == 0]
