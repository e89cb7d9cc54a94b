"""Scoring rules on residual states: the paper's centroid rule and a tuned shrinkage-LDA rule.

Both are :class:`Scorer` s built by small factories (:func:`fit_paper`, :func:`fit_tuned`) and
restored from an artifact by :func:`scorer_from_artifact`. Every computation runs in float64
whatever the host's dtype.

Shapes: ``states`` given to a scorer are ``(n, len(scorer.layers), d_model)``: the t_inst state of
each prompt at each layer the scorer reads, in the order of ``scorer.layers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .errors import CalibrationError, NumericalError
from .metrics import auroc, threshold_at_fpr

__all__ = [
    "Centroids",
    "PaperScorer",
    "ScoreOutput",
    "Scorer",
    "TunedOptions",
    "TunedScorer",
    "cosine_scores",
    "fit_centroids",
    "fit_paper",
    "fit_tuned",
    "scorer_from_artifact",
]

_F64 = torch.float64


@dataclass(frozen=True)
class ScoreOutput:
    """Scores of a batch: ``score`` ``(n,)``, ``layer_scores`` ``(n, layers)``, ``category_scores`` ``(n, C)``."""

    score: torch.Tensor
    layer_scores: torch.Tensor
    category_scores: torch.Tensor


class Scorer(Protocol):
    """A fitted scoring rule: reads states at ``layers`` and returns scores (higher = more harmful)."""

    mode: str
    layers: tuple[int, ...]
    categories: tuple[str, ...]
    threshold: float

    def score(self, states: torch.Tensor) -> ScoreOutput: ...

    def to_tensors(self) -> dict[str, torch.Tensor]: ...

    def config(self) -> dict[str, Any]: ...


def _check_states(states: torch.Tensor, layers: int) -> torch.Tensor:
    if states.dim() != 3 or states.shape[1] != layers:
        raise ValueError(f"states must be (n, {layers}, d_model), got {tuple(states.shape)}")
    out = states.to(_F64)
    if not torch.isfinite(out).all():
        raise NumericalError("hidden states contain NaN or inf")
    return out


def cosine_scores(states: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-layer ``cos(h, positive) − cos(h, negative)``.

    Args:
        states: ``(n, layers, d)``; positive, negative: ``(layers, d)``.

    Returns:
        ``(n, layers)`` float64.
    """
    h = torch.nn.functional.normalize(states.to(_F64), dim=-1)
    p = torch.nn.functional.normalize(positive.to(_F64), dim=-1)
    q = torch.nn.functional.normalize(negative.to(_F64), dim=-1)
    return (h * p).sum(-1) - (h * q).sum(-1)


@dataclass(frozen=True)
class Centroids:
    """Class means per layer at t_inst.

    ``harmful``/``harmless``: ``(layers, d)``; ``categories``: name → ``(layers, d)``.
    """

    layers: tuple[int, ...]
    harmful: torch.Tensor
    harmless: torch.Tensor
    categories: Mapping[str, torch.Tensor]

    @property
    def harmfulness_direction(self) -> torch.Tensor:
        """v_harmful = μ_harmful − μ_harmless, ``(layers, d)``."""
        return self.harmful - self.harmless


def _group_means(states: torch.Tensor, labels: Sequence[str | None]) -> dict[str, torch.Tensor]:
    groups: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        if label is not None:
            groups.setdefault(label, []).append(index)
    return {name: states[idx].mean(0) for name, idx in sorted(groups.items())}


def fit_centroids(harmful: torch.Tensor, harmless: torch.Tensor, layers: Sequence[int],
                  categories: Sequence[str | None] | None = None) -> Centroids:
    """Centroids from t_inst states ``harmful`` ``(n_h, layers, d)`` and ``harmless`` ``(n_b, layers, d)``."""
    if harmful.shape[0] == 0 or harmless.shape[0] == 0:
        raise CalibrationError("need at least one harmful and one harmless example")
    h = _check_states(harmful, len(layers))
    b = _check_states(harmless, len(layers))
    cats = _group_means(h, categories) if categories is not None else {}
    return Centroids(tuple(layers), h.mean(0), b.mean(0), cats)


class PaperScorer:
    """The paper's Latent Guard: Δ_harmful = mean over layers of cos(h, μ_harmful) − cos(h, μ_harmless).

    Harmful iff Δ_harmful ≥ threshold (α = 0 by default). Category score c is the same formula
    with μ_c in place of μ_harmful.
    """

    mode = "paper"

    def __init__(self, centroids: Centroids, threshold: float = 0.0) -> None:
        self.centroids = centroids
        self.layers = centroids.layers
        self.categories = tuple(centroids.categories)
        self.threshold = float(threshold)

    def score(self, states: torch.Tensor) -> ScoreOutput:
        x = _check_states(states, len(self.layers))
        per_layer = cosine_scores(x, self.centroids.harmful, self.centroids.harmless)
        if self.categories:
            cats = torch.stack([cosine_scores(x, self.centroids.categories[c], self.centroids.harmless).mean(-1)
                                for c in self.categories], dim=1)
        else:
            cats = torch.zeros(x.shape[0], 0, dtype=_F64)
        return ScoreOutput(per_layer.mean(-1), per_layer, cats)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "threshold": self.threshold,
                "categories": list(self.categories)}


# ----------------------------------------------------------------------------------------- tuned mode

@dataclass(frozen=True)
class TunedOptions:
    """Knobs of the tuned rule (all chosen by cross-validation on the calibration set unless fixed).

    Attributes:
        num_layers: how many layers to combine (a contiguous window, chosen by CV AUROC).
        shrinkage: candidate shrinkage strengths γ for the within-class covariance.
        folds: cross-validation folds.
        target_fpr: the threshold passes this fraction of held-out harmless calibration prompts
            wrongly flagged at most; ``None`` puts it at log-odds 0 (balanced classes).
        max_layer: do not read layers above this (lets early exit pay); ``None`` = all.
    """

    num_layers: int = 4
    shrinkage: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8, 0.95)
    folds: int = 5
    target_fpr: float | None = 0.05
    max_layer: int | None = None
    seed: int = 0


def _lda_directions(pos: torch.Tensor, neg: torch.Tensor, gammas: Sequence[float]
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shrinkage-LDA directions (one per γ, from one eigendecomposition) and the midpoint, for one layer.

    The within-class covariance S is shrunk towards ``mean(diag S)·I``:
    ``S_γ = (1 − γ) S + γ mean(diag S) I`` and ``w_γ = S_γ⁻¹ (μ_pos − μ_neg)``.

    Args:
        pos, neg: ``(n_pos, d)``, ``(n_neg, d)`` float64.

    Returns:
        (list of w ``(d,)`` scaled so the projected classes have unit pooled std, midpoint ``(d,)``).
    """
    mu_p, mu_n = pos.mean(0), neg.mean(0)
    centred = torch.cat([pos - mu_p, neg - mu_n])
    cov = centred.T @ centred / max(centred.shape[0] - 2, 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals = eigvals.clamp(min=0.0)
    scale = eigvals.mean()
    diff = eigvecs.T @ (mu_p - mu_n)
    out = []
    for gamma in gammas:
        w = eigvecs @ (diff / ((1.0 - gamma) * eigvals + gamma * scale))
        spread = (centred @ w).std()
        if not torch.isfinite(spread) or spread <= 0:
            raise NumericalError("degenerate calibration states: zero spread along the discriminant")
        out.append(w / spread)
    return out, (mu_p + mu_n) / 2.0


def _lda_direction(pos: torch.Tensor, neg: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_lda_directions` for one γ."""
    ws, mid = _lda_directions(pos, neg, [gamma])
    return ws[0], mid


def _project(states: torch.Tensor, w: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    return (states - mid) @ w


def _platt(z: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Class-balanced 1-D logistic fit ``p = σ(a z + b)`` by Newton's method (with a tiny ridge)."""
    weights = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        g = weights * (p - y)
        grad = np.array([(g * z).sum() + 1e-4 * a, g.sum()])
        s = weights * p * (1 - p)
        hess = np.array([[(s * z * z).sum() + 1e-4, (s * z).sum()], [(s * z).sum(), s.sum() + 1e-9]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def _folds(n_pos: int, n_neg: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified fold masks: list of (pos_test_mask, neg_test_mask)."""
    rng = np.random.default_rng(seed)
    pos_fold = rng.permutation(np.arange(n_pos) % k)
    neg_fold = rng.permutation(np.arange(n_neg) % k)
    return [(pos_fold == f, neg_fold == f) for f in range(k)]


class TunedScorer:
    """Tuned Latent Guard: shrinkage-LDA per layer on a CV-chosen window of layers, Platt-calibrated.

    Per layer l in ``layers``: z_l = (h_l − m_l) · w_l (w_l = shrinkage-LDA direction, scaled to unit
    within-class spread); layer score s_l = a·z_l + b, a log-odds; the score is the mean of s_l.
    Category c has its own directions (category-c prompts vs harmless) and calibration.
    """

    mode = "tuned"

    def __init__(self, layers: Sequence[int], directions: torch.Tensor, midpoints: torch.Tensor,
                 calibration: tuple[float, float], threshold: float,
                 categories: Sequence[str] = (), category_directions: torch.Tensor | None = None,
                 category_midpoints: torch.Tensor | None = None,
                 category_calibration: torch.Tensor | None = None, shrinkage: float = 0.5) -> None:
        self.layers = tuple(int(x) for x in layers)
        self.directions = directions.to(_F64)          # (layers, d)
        self.midpoints = midpoints.to(_F64)            # (layers, d)
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.threshold = float(threshold)
        self.categories = tuple(categories)
        d = self.directions.shape[-1]
        empty = torch.zeros(0, len(self.layers), d, dtype=_F64)
        self.category_directions = (category_directions if category_directions is not None else empty).to(_F64)
        self.category_midpoints = (category_midpoints if category_midpoints is not None else empty).to(_F64)
        self.category_calibration = (category_calibration if category_calibration is not None
                                     else torch.zeros(0, 2, dtype=_F64)).to(_F64)
        self.shrinkage = float(shrinkage)

    def score(self, states: torch.Tensor) -> ScoreOutput:
        x = _check_states(states, len(self.layers))
        z = ((x - self.midpoints) * self.directions).sum(-1)                  # (n, layers)
        a, b = self.calibration
        per_layer = a * z + b
        if self.categories:
            zc = ((x.unsqueeze(1) - self.category_midpoints) * self.category_directions).sum(-1)  # (n, C, layers)
            cal = self.category_calibration                                                     # (C, 2)
            cats = cal[:, 0] * zc.mean(-1) + cal[:, 1]
        else:
            cats = torch.zeros(x.shape[0], 0, dtype=_F64)
        return ScoreOutput(per_layer.mean(-1), per_layer, cats)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "tuned.directions": self.directions.float(),
            "tuned.midpoints": self.midpoints.float(),
            "tuned.category_directions": self.category_directions.float(),
            "tuned.category_midpoints": self.category_midpoints.float(),
            "tuned.category_calibration": self.category_calibration.float(),
        }

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "threshold": self.threshold,
                "categories": list(self.categories), "calibration": list(self.calibration),
                "shrinkage": self.shrinkage}


def fit_paper(centroids: Centroids, threshold: float = 0.0) -> PaperScorer:
    """The paper's rule on all layers of ``centroids`` with α = ``threshold`` (0 in the paper)."""
    return PaperScorer(centroids, threshold)


def _cv_layer_scores(pos: torch.Tensor, neg: torch.Tensor, gammas: Sequence[float],
                     folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold z-scores of every layer and γ: pos ``(γ, n_pos, layers)``, neg ``(γ, n_neg, layers)``."""
    n_layers = pos.shape[1]
    out_pos = np.zeros((len(gammas), pos.shape[0], n_layers))
    out_neg = np.zeros((len(gammas), neg.shape[0], n_layers))
    for test_p, test_n in folds:
        tp, tn = torch.from_numpy(test_p), torch.from_numpy(test_n)
        for layer in range(n_layers):
            ws, mid = _lda_directions(pos[~tp, layer], neg[~tn, layer], gammas)
            for g, w in enumerate(ws):
                out_pos[g, test_p, layer] = _project(pos[tp, layer], w, mid).numpy()
                out_neg[g, test_n, layer] = _project(neg[tn, layer], w, mid).numpy()
    return out_pos, out_neg


def fit_tuned(harmful: torch.Tensor, harmless: torch.Tensor, layers: Sequence[int],
              categories: Sequence[str | None] | None = None,
              options: TunedOptions | None = None) -> tuple[TunedScorer, dict[str, Any]]:
    """Fit the tuned rule on t_inst states.

    Args:
        harmful: ``(n_h, len(layers), d)``; harmless: ``(n_b, len(layers), d)``.
        layers: the residual layers those states come from.
        categories: per harmful row, its risk category (or None).

    Returns:
        (scorer, report) — the report holds the CV AUROC per layer and shrinkage, the chosen window,
        and held-out rates, for plots and the calibration summary.
    """
    opts = options if options is not None else TunedOptions()
    pos = _check_states(harmful, len(layers))
    neg = _check_states(harmless, len(layers))
    if min(pos.shape[0], neg.shape[0]) < max(opts.folds, 4):
        raise CalibrationError(f"tuned mode needs at least {max(opts.folds, 4)} examples per class; "
                               f"got {pos.shape[0]} harmful and {neg.shape[0]} harmless")
    allowed = [i for i, layer in enumerate(layers) if opts.max_layer is None or layer <= opts.max_layer]
    if not allowed:
        raise CalibrationError(f"no layer at or below max_layer={opts.max_layer}")
    pos_a, neg_a = pos[:, allowed], neg[:, allowed]
    folds = _folds(pos.shape[0], neg.shape[0], opts.folds, opts.seed)
    window = max(1, min(opts.num_layers, len(allowed)))
    best: tuple[float, float, int, np.ndarray, np.ndarray] | None = None
    per_layer_auc: dict[float, list[float]] = {}
    all_zp, all_zn = _cv_layer_scores(pos_a, neg_a, opts.shrinkage, folds)
    for gamma, zp, zn in zip(opts.shrinkage, all_zp, all_zn, strict=True):
        per_layer_auc[gamma] = [auroc(zp[:, i], zn[:, i]) or 0.5 for i in range(len(allowed))]
        for start in range(len(allowed) - window + 1):
            mp, mn = zp[:, start:start + window].mean(1), zn[:, start:start + window].mean(1)
            value = auroc(mp, mn) or 0.5
            if best is None or value > best[0] + 1e-4:
                best = (value, gamma, start, mp, mn)
    if best is None:
        raise CalibrationError("no shrinkage candidates given")
    cv_auc, gamma, start, oof_pos, oof_neg = best
    chosen = allowed[start:start + window]
    z = np.concatenate([oof_pos, oof_neg])
    y = np.concatenate([np.ones(len(oof_pos)), np.zeros(len(oof_neg))])
    a, b = _platt(z, y)
    logit_neg = a * oof_neg + b
    threshold = 0.0 if opts.target_fpr is None else max(0.0, threshold_at_fpr(logit_neg, opts.target_fpr))
    dirs, mids = [], []
    for index in chosen:
        w, mid = _lda_direction(pos[:, index], neg[:, index], gamma)
        dirs.append(w)
        mids.append(mid)
    cat_names: list[str] = []
    cat_dirs, cat_mids, cat_cal = [], [], []
    if categories is not None:
        names = sorted({c for c in categories if c is not None})
        for name in names:
            rows = [i for i, c in enumerate(categories) if c == name]
            if len(rows) < 2:
                continue
            sub = pos[rows]
            ws, ms, zs_p, zs_n = [], [], [], []
            for index in chosen:
                w, mid = _lda_direction(sub[:, index], neg[:, index], gamma)
                ws.append(w)
                ms.append(mid)
                zs_p.append(_project(sub[:, index], w, mid))
                zs_n.append(_project(neg[:, index], w, mid))
            zc = torch.cat([torch.stack(zs_p, 1).mean(1), torch.stack(zs_n, 1).mean(1)]).numpy()
            yc = np.concatenate([np.ones(len(rows)), np.zeros(neg.shape[0])])
            cat_names.append(name)
            cat_dirs.append(torch.stack(ws))
            cat_mids.append(torch.stack(ms))
            cat_cal.append(torch.tensor(_platt(zc, yc), dtype=_F64))
    d = pos.shape[-1]
    scorer = TunedScorer(
        [layers[i] for i in chosen], torch.stack(dirs), torch.stack(mids), (a, b), threshold,
        cat_names,
        torch.stack(cat_dirs) if cat_dirs else torch.zeros(0, len(chosen), d, dtype=_F64),
        torch.stack(cat_mids) if cat_mids else torch.zeros(0, len(chosen), d, dtype=_F64),
        torch.stack(cat_cal) if cat_cal else torch.zeros(0, 2, dtype=_F64),
        shrinkage=gamma,
    )
    report = {
        "cv_auroc": cv_auc,
        "shrinkage": gamma,
        "layers": list(scorer.layers),
        "per_layer_cv_auroc": {str(g): dict(zip([layers[i] for i in allowed], v, strict=True))
                               for g, v in per_layer_auc.items()},
        "heldout_detect_rate": float((a * oof_pos + b >= threshold).mean()),
        "heldout_pass_rate": float((logit_neg < threshold).mean()),
    }
    return scorer, report


def scorer_from_artifact(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                         centroids: Centroids) -> PaperScorer | TunedScorer:
    """Rebuild a scorer from its ``config()`` and ``to_tensors()`` (plus the stored centroids)."""
    mode = config.get("mode")
    if mode == "paper":
        return PaperScorer(centroids, float(config["threshold"]))
    if mode == "tuned":
        return TunedScorer(
            config["layers"], tensors["tuned.directions"], tensors["tuned.midpoints"],
            tuple(config["calibration"]), float(config["threshold"]), config.get("categories", []),
            tensors["tuned.category_directions"], tensors["tuned.category_midpoints"],
            tensors["tuned.category_calibration"], shrinkage=float(config.get("shrinkage", 0.5)),
        )
    raise ValueError(f"unknown scoring mode {mode!r}: expected 'paper' or 'tuned'")
