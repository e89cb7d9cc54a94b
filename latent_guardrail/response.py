"""The response scorer: is an answer harmful, judged from the host's states at the answer's own tokens.

Fitted like the pooled input scorer (:mod:`latent_guardrail.pooled`): a shrinkage-LDA read-out per layer on a
window of layers, chosen — with the response view (:data:`latent_guardrail.answers.RESPONSE_VIEWS`: ``last``,
``mean``, ``ends``) and the shrinkage — by **leave-one-family-out** cross-validated AUROC of the answers' pooled
scores, then Platt-calibrated on the out-of-fold scores. A row is one reading of the view (a check point or a
sentence end) and carries its answer's label; an answer's score is the **max over its rows**, which is exactly
what a streaming check does when it stops at the first check point that crosses the threshold.

Labels (the calibration pairs): 1 = the host complied with a harmful request; 0 = anything else the host (or a
written text) says: a refusal to a harmful request, an answer to a harmless one.

Shapes: a :class:`ResponseScorer` reads rows ``(rows, len(layers), d)``. Everything is computed in float64.
"""

from __future__ import annotations

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

__all__ = ["ResponseOptions", "ResponseScore", "ResponseScorer", "ResponseTracker", "fit_response"]

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


class ResponseScorer:
    """Shrinkage-LDA per layer on answer-token states, max-pooled over a response view's rows, Platt-calibrated.

    Row score ``s_r = a · mean_l (h_rl − m_l) · w_l + b``; the answer's score is ``max_r s_r``.
    """

    mode = "response"
    tensor_prefix = "response."

    def __init__(self, layers: Sequence[int], directions: torch.Tensor, midpoints: torch.Tensor,
                 calibration: tuple[float, float], threshold: float, *, view: str = "last",
                 every: int = DEFAULT_EVERY, shrinkage: float = 0.5) -> None:
        self.layers = tuple(int(x) for x in layers)
        self.directions = directions.to(_F64)          # (layers, d)
        self.midpoints = midpoints.to(_F64)            # (layers, d)
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.threshold = float(threshold)
        self.view = str(view)
        self.every = int(every)
        self.shrinkage = float(shrinkage)

    def row_scores(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-row, per-layer log-odds ``(rows, layers)`` of states ``(rows, layers, d)``."""
        if rows.dim() != 3 or rows.shape[1:] != self.directions.shape:
            raise ValueError(f"rows must be (rows, {len(self.layers)}, {self.directions.shape[-1]}), "
                             f"got {tuple(rows.shape)}")
        x = rows.to(_F64)
        if not torch.isfinite(x).all():
            raise NumericalError("hidden states contain NaN or inf")
        a, b = self.calibration
        return a * ((x - self.midpoints) * self.directions).sum(-1) + b

    def score(self, rows: torch.Tensor) -> ResponseScore:
        """The answer's score from its view rows ``(rows, layers, d)`` (at least one row)."""
        if rows.dim() != 3 or rows.shape[0] < 1:
            raise ValueError(f"an answer needs at least one row of states, got shape {tuple(rows.shape)}")
        per = self.row_scores(rows)                                    # (rows, layers)
        pooled = per.mean(-1)
        row = int(pooled.argmax())
        return ResponseScore(float(pooled[row]), row, tuple(float(x) for x in per[row]))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        p = self.tensor_prefix
        return {f"{p}directions": self.directions.float(), f"{p}midpoints": self.midpoints.float()}

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "view": self.view,
                "view_rule": RESPONSE_VIEWS.get(self.view, ""), "every": self.every, "threshold": self.threshold,
                "calibration": list(self.calibration), "shrinkage": self.shrinkage}

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
        return cls(config["layers"], tensors[f"{p}directions"], tensors[f"{p}midpoints"],
                   tuple(config["calibration"]), float(config["threshold"]), view=view,
                   every=int(config["every"]), shrinkage=float(config.get("shrinkage", 0.5)))


class ResponseTracker:
    """The response scorer's reading of an answer while it is generated, one token state at a time.

    :meth:`add` takes the state ``(layers, d)`` of the next answer token and whether that token ends a sentence;
    it returns the answer's score so far when this token is a check point of the scorer's view (``last`` /
    ``mean``: every ``every``-th token; ``ends``: a sentence end), else None. :meth:`final` scores the last
    token seen (the answer's end is always a check point). ``best`` is the highest score so far.
    """

    def __init__(self, scorer: ResponseScorer) -> None:
        self.scorer = scorer
        self.count = 0
        self.best: ResponseScore | None = None
        self._sum: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._checked_at = -1

    def _reading(self) -> torch.Tensor:
        assert self._last is not None and self._sum is not None
        return self._sum / self.count if self.scorer.view == "mean" else self._last

    def _check(self) -> ResponseScore:
        scored = self.scorer.score(self._reading().unsqueeze(0))
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

@dataclass(frozen=True)
class ResponseOptions:
    """Knobs of the response scorer (chosen by cross-validation unless fixed).

    Attributes:
        num_layers: layers combined (a contiguous window of the layers read).
        shrinkage: candidate shrinkage strengths γ.
        views: candidate response views.
        target_fpr: the threshold lets at most this fraction of held-out label-0 answers be flagged (never below
            log-odds 0); None puts it at 0.
        every: check spacing of the ``last`` / ``mean`` views (tokens).
    """

    num_layers: int = 4
    shrinkage: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8)
    views: tuple[str, ...] = tuple(RESPONSE_VIEWS)
    target_fpr: float | None = 0.05
    every: int = DEFAULT_EVERY


def _pool_max(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    best = np.full(n, -np.inf)
    np.maximum.at(best, owner, values)
    return best


def fit_response(views: Mapping[str, Sequence[torch.Tensor]], labels: np.ndarray, groups: np.ndarray,
                 layers: Sequence[int], options: ResponseOptions | None = None
                 ) -> tuple[ResponseScorer, dict[str, Any]]:
    """Fit the response scorer.

    Args:
        views: per response view, per answer, its rows ``(rows, len(layers), d)`` (as
            :func:`latent_guardrail.answers.read_answer_states` returns them).
        labels: ``(n_answers,)`` 1 = compliant answer to a harmful request, 0 = any other answer.
        groups: ``(n_answers,)`` family ids; cross-validation leaves one family out at a time.
        layers: the residual layers of the rows.

    Returns:
        (scorer, report): the report holds the leave-one-family-out AUROC of the best candidates, the choice,
        the held-out detection / pass rates at the threshold, and per-view / per-layer AUROCs.
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
    gammas = list(opts.shrinkage)
    window = max(1, min(opts.num_layers, len(layers)))
    best: tuple[float, str, int, int, np.ndarray] | None = None
    candidates: list[dict[str, Any]] = []
    per_layer: dict[str, list[float]] = {}
    finals: dict[tuple[str, int], tuple[list[torch.Tensor], torch.Tensor]] = {}
    for view in names:
        per_answer = list(views[view])
        if len(per_answer) != n:
            raise ValueError(f"view {view!r} has {len(per_answer)} answers, labels {n}")
        owner = np.concatenate([np.full(t.shape[0], i) for i, t in enumerate(per_answer)])
        rows = torch.cat(list(per_answer)).to(_F64)                          # (R, layers, d)
        row_label, row_group = labels[owner], group_index[owner]
        oof = np.zeros((len(gammas), rows.shape[0], len(layers)))
        for j in range(len(layers)):
            x = rows[:, j]
            scatter = _Scatter(x, row_label, row_group, n_groups)
            for g in range(n_groups):
                test = row_group == g
                if not test.any():
                    continue
                ws, mid = scatter.directions(gammas, g)
                held = x[torch.from_numpy(test)] - mid
                for k, w in enumerate(ws):
                    oof[k, test, j] = (held @ w).numpy()
            finals[(view, j)] = scatter.directions(gammas, None)
        per_layer[view] = [auroc(*_split(_pool_max(oof[len(gammas) // 2, :, j], owner, n), labels)) or 0.5
                           for j in range(len(layers))]
        for k, gamma in enumerate(gammas):
            for start in range(len(layers) - window + 1):
                scores = _pool_max(oof[k, :, start:start + window].mean(axis=1), owner, n)
                value = auroc(*_split(scores, labels)) or 0.5
                candidates.append({"view": view, "shrinkage": gamma, "auroc": value,
                                   "layers": [int(x) for x in layers[start:start + window]]})
                if best is None or value > best[0] + 1e-4:
                    best = (value, view, k, start, scores)
    assert best is not None
    cv_auc, view, k, start, oof_scores = best
    a, b = _platt(oof_scores, labels.astype(float))
    logit = a * oof_scores + b
    threshold = 0.0 if opts.target_fpr is None else max(0.0, threshold_at_fpr(logit[labels == 0], opts.target_fpr))
    chosen = list(range(start, start + window))
    dirs = torch.stack([finals[(view, j)][0][k] for j in chosen])
    mids = torch.stack([finals[(view, j)][1] for j in chosen])
    scorer = ResponseScorer([layers[j] for j in chosen], dirs, mids, (a, b), threshold, view=view,
                            every=opts.every, shrinkage=gammas[k])
    by_group = {}
    for g in np.unique(np.asarray(groups)):
        mask = np.asarray(groups) == g
        by_group[str(g)] = {"n": int(mask.sum()), "compliant": int((labels[mask] == 1).sum()),
                            "flagged": float((logit[mask] >= threshold).mean())}
    best_by_view = {name: max((c["auroc"] for c in candidates if c["view"] == name), default=0.5) for name in names}
    report = {
        "cv": "leave-one-family-out", "groups": n_groups, "answers": n, "compliant": int((labels == 1).sum()),
        "cv_auroc": cv_auc, "view": view, "shrinkage": gammas[k], "layers": list(scorer.layers), "every": opts.every,
        "cv_auroc_by_view": best_by_view, "cv_auroc_by_layer": {v: dict(zip([int(x) for x in layers], aucs,
                                                                            strict=True))
                                                                for v, aucs in per_layer.items()},
        "candidates_top": sorted(candidates, key=lambda c: -c["auroc"])[:8],
        "heldout_detect_rate": float((logit[labels == 1] >= threshold).mean()),
        "heldout_pass_rate": float((logit[labels == 0] < threshold).mean()),
        "heldout_by_group": by_group,
    }
    return scorer, report


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return scores[labels == 1], scores[labels == 0]
