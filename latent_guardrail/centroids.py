"""Scoring rules on residual states: the paper's centroid rule and a tuned shrinkage-LDA rule.

Both are :class:`Scorer` s built by small factories (:func:`fit_paper`, :func:`fit_tuned`) and
restored from an artifact by :func:`scorer_from_artifact`. Every computation runs in float64
whatever the host's dtype.

Shapes: ``states`` given to a scorer are ``(n, len(scorer.layers), d_model)``: the t_inst state of
each prompt at each layer the scorer reads, in the order of ``scorer.layers``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .errors import CalibrationError, NumericalError
from .metrics import auroc, threshold_at_fpr
from .views import VIEWS

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
]

_F64 = torch.float64


@dataclass(frozen=True)
class ScoreOutput:
    """Scores of a batch: ``score`` ``(n,)``, ``layer_scores`` ``(n, layers)``, ``category_scores`` ``(n, C)``;
    ``slot`` ``(n,)``: for a scorer that pools a set view, the slot that decided (else None)."""

    score: torch.Tensor
    layer_scores: torch.Tensor
    category_scores: torch.Tensor
    slot: torch.Tensor | None = None


class Scorer(Protocol):
    """A fitted scoring rule: reads states at ``layers`` and returns scores (higher = more harmful).

    ``mode`` is its key in :data:`latent_guardrail.scorers.SCORERS`; its own tensors are named
    ``tensor_prefix + <name>`` in an artifact. ``from_tensors(config(), to_tensors(), centroids)`` rebuilds an
    equal scorer; :meth:`validate` raises ``ValueError`` when its tensors do not fit a host of that width.
    """

    mode: str
    tensor_prefix: str
    layers: tuple[int, ...]
    views: tuple[str, ...]
    categories: tuple[str, ...]
    threshold: float

    def score(self, states: torch.Tensor) -> ScoreOutput: ...

    def to_tensors(self) -> dict[str, torch.Tensor]: ...

    def config(self) -> dict[str, Any]: ...

    def validate(self, hidden_size: int) -> None: ...

    @classmethod
    def from_tensors(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     centroids: Centroids) -> Scorer: ...


def _check_finite(numbers: Sequence[float]) -> None:
    if not all(math.isfinite(x) for x in numbers):
        raise ValueError("the scorer's threshold or calibration is not a finite number")


def check_scorer_tensors(prefix: str, shapes: Mapping[str, tuple[torch.Tensor, tuple[int, ...]]],
                         numbers: Sequence[float]) -> None:
    """Each named tensor has its expected shape and ``numbers`` (threshold, calibration) are finite.

    Raises:
        ValueError: naming the tensor (with ``prefix``) or the non-finite number.
    """
    for name, (value, shape) in shapes.items():
        if tuple(value.shape) != shape:
            raise ValueError(f"tensor {prefix + name!r} has shape {tuple(value.shape)}, expected {shape}")
    _check_finite(numbers)


def _check_states(states: torch.Tensor, layers: int, views: Sequence[str] | None = None) -> torch.Tensor:
    """Validate and upcast states: ``(n, layers, d)`` when ``views`` is None, else ``(n, views, layers, d)``.

    A single view may be given either way (the view axis is added or dropped).
    """
    if views is None:
        if states.dim() == 4 and states.shape[1] == 1:
            states = states[:, 0]
        if states.dim() != 3 or states.shape[1] != layers:
            raise ValueError(f"states must be (n, {layers}, d_model), got {tuple(states.shape)}")
    else:
        if states.dim() == 3 and len(views) == 1:
            states = states.unsqueeze(1)
        if states.dim() != 4 or states.shape[1] != len(views) or states.shape[2] != layers:
            raise ValueError(f"states must be (n, {len(views)}, {layers}, d_model) for views {tuple(views)}, "
                             f"got {tuple(states.shape)}")
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
    tensor_prefix = "paper."
    views: tuple[str, ...] = ("t_inst",)

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

    def validate(self, hidden_size: int) -> None:
        """The centroids have the host's width and the threshold is finite (ValueError otherwise)."""
        if self.centroids.harmful.shape[-1] != hidden_size:
            raise ValueError(f"centroids have width {self.centroids.harmful.shape[-1]}, expected {hidden_size}")
        _check_finite([self.threshold])

    @classmethod
    def from_tensors(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     centroids: Centroids) -> PaperScorer:
        """The paper scorer of ``config()`` on the stored centroids (it has no tensors of its own)."""
        return cls(centroids, float(config["threshold"]))


# ----------------------------------------------------------------------------------------- tuned mode

VIEW_SETS: tuple[tuple[str, ...], ...] = (("t_inst",), ("t_inst", "content_mean"))
"""Candidate views for tuned mode: the paper's t_inst token alone, or with the mean over the user's content."""


@dataclass(frozen=True)
class TunedOptions:
    """Knobs of the tuned rule (all chosen by cross-validation on the calibration set unless fixed).

    Attributes:
        num_layers: how many layers to combine (a contiguous window, chosen by CV AUROC).
        shrinkage: candidate shrinkage strengths γ for the within-class covariance.
        view_sets: candidate sets of views (each must be among the views given to :func:`fit_tuned`).
        folds: cross-validation folds.
        target_fpr: the threshold lets at most this fraction of held-out harmless calibration prompts
            be flagged; ``None`` puts it at log-odds 0 (balanced classes). Never below log-odds 0.
        max_layer: do not read layers above this (lets early exit pay); ``None`` = all.
    """

    num_layers: int = 4
    shrinkage: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8)
    view_sets: tuple[tuple[str, ...], ...] = VIEW_SETS
    folds: int = 5
    target_fpr: float | None = 0.05
    max_layer: int | None = None
    seed: int = 0


def _lda_directions(pos: torch.Tensor, neg: torch.Tensor, gammas: Sequence[float]
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shrinkage-LDA directions (one per γ, from one eigendecomposition) and the midpoint, for one layer.

    The within-class covariance S is shrunk towards ``s·I`` with ``s = mean(diag S)``:
    ``S_γ = (1 − γ) S + γ s I`` and ``w_γ = S_γ⁻¹ (μ_pos − μ_neg)``. With fewer examples than dimensions the
    eigendecomposition is done on the n×n Gram matrix (S has rank < n; off its span S_γ⁻¹ = 1/(γ s)).

    Args:
        pos, neg: ``(n_pos, d)``, ``(n_neg, d)`` float64.

    Returns:
        (list of w ``(d,)`` scaled so the projected classes have unit pooled std, midpoint ``(d,)``).
    """
    mu_p, mu_n = pos.mean(0), neg.mean(0)
    centred = torch.cat([pos - mu_p, neg - mu_n])                       # (n, d)
    n, d = centred.shape
    denom = max(n - 2, 1)
    diff = mu_p - mu_n
    if n < d:
        gram_vals, gram_vecs = torch.linalg.eigh(centred @ centred.T / denom)
        keep = gram_vals > gram_vals.max() * 1e-10
        eigvals = gram_vals[keep]
        eigvecs = (centred.T @ gram_vecs[:, keep]) / torch.sqrt(eigvals * denom)   # (d, r) orthonormal
        scale = eigvals.sum() / d
    else:
        eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / denom)
        eigvals = eigvals.clamp(min=0.0)
        scale = eigvals.mean()
    along = eigvecs.T @ diff
    rest = diff - eigvecs @ along
    out = []
    for gamma in gammas:
        w = eigvecs @ (along / ((1.0 - gamma) * eigvals + gamma * scale))
        if gamma > 0:
            w = w + rest / (gamma * scale)
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
    """Class-balanced 1-D logistic fit ``p = σ(a z + b)`` by Newton's method (with a tiny ridge).

    The fit runs on ``z`` standardised (Newton's steps from ``a = 1`` overflow on scores of a large scale) and is
    mapped back."""
    center, scale = float(np.mean(z)), float(np.std(z))
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    unit_a, unit_b = _platt_unit((z - center) / scale, y, iters)
    return unit_a / scale, unit_b - unit_a * center / scale


def _platt_unit(z: np.ndarray, y: np.ndarray, iters: int) -> tuple[float, float]:
    """:func:`_platt` on standardised scores; a tiny ridge on both parameters and Newton steps of at most 5, so
    separable classes (whose fit has no finite optimum) end at a large but finite slope."""
    weights = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -500.0, 500.0)))
        g = weights * (p - y)
        grad = np.array([(g * z).sum() + 1e-4 * a, g.sum() + 1e-4 * b])
        s = weights * p * (1 - p)
        hess = np.array([[(s * z * z).sum() + 1e-4, (s * z).sum()], [(s * z).sum(), s.sum() + 1e-4]])
        step = np.linalg.solve(hess, grad)
        step *= min(1.0, 5.0 / max(float(np.abs(step).max()), 1e-300))
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
    """Tuned Latent Guard: shrinkage-LDA per (view, layer) on a CV-chosen window of layers, Platt-calibrated.

    For each view v (t_inst, optionally the mean over the user's content tokens) and layer l:
    z_vl = (h_vl − m_vl) · w_vl, w_vl the shrinkage-LDA direction scaled to unit within-class spread.
    Layer score s_l = a · mean_v z_vl + b (a log-odds); the score is the mean of the s_l. Category c has its
    own directions (category-c prompts vs harmless) and calibration.

    ``states`` given to :meth:`score` are ``(n, len(views), len(layers), d)``.
    """

    mode = "tuned"
    tensor_prefix = "tuned."

    def __init__(self, layers: Sequence[int], directions: torch.Tensor, midpoints: torch.Tensor,
                 calibration: tuple[float, float], threshold: float,
                 categories: Sequence[str] = (), category_directions: torch.Tensor | None = None,
                 category_midpoints: torch.Tensor | None = None,
                 category_calibration: torch.Tensor | None = None, shrinkage: float = 0.5,
                 views: Sequence[str] = ("t_inst",)) -> None:
        self.layers = tuple(int(x) for x in layers)
        self.views = tuple(views)
        self.directions = directions.to(_F64)          # (views, layers, d)
        self.midpoints = midpoints.to(_F64)            # (views, layers, d)
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.threshold = float(threshold)
        self.categories = tuple(categories)
        shape = (0, len(self.views), len(self.layers), self.directions.shape[-1])
        self.category_directions = (category_directions if category_directions is not None
                                    else torch.zeros(shape, dtype=_F64)).to(_F64)   # (C, views, layers, d)
        self.category_midpoints = (category_midpoints if category_midpoints is not None
                                   else torch.zeros(shape, dtype=_F64)).to(_F64)
        self.category_calibration = (category_calibration if category_calibration is not None
                                     else torch.zeros(0, 2, dtype=_F64)).to(_F64)   # (C, 2)
        self.shrinkage = float(shrinkage)

    def score(self, states: torch.Tensor) -> ScoreOutput:
        x = _check_states(states, len(self.layers), self.views)                      # (n, views, layers, d)
        z = ((x - self.midpoints) * self.directions).sum(-1).mean(1)                  # (n, layers)
        a, b = self.calibration
        per_layer = a * z + b
        if self.categories:
            zc = ((x.unsqueeze(1) - self.category_midpoints) * self.category_directions).sum(-1)  # (n, C, V, L)
            cal = self.category_calibration
            cats = cal[:, 0] * zc.mean(dim=(2, 3)) + cal[:, 1]
        else:
            cats = torch.zeros(x.shape[0], 0, dtype=_F64)
        return ScoreOutput(per_layer.mean(-1), per_layer, cats)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        p = self.tensor_prefix
        return {
            f"{p}directions": self.directions.float(),
            f"{p}midpoints": self.midpoints.float(),
            f"{p}category_directions": self.category_directions.float(),
            f"{p}category_midpoints": self.category_midpoints.float(),
            f"{p}category_calibration": self.category_calibration.float(),
        }

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "views": list(self.views),
                "threshold": self.threshold, "categories": list(self.categories),
                "calibration": list(self.calibration), "shrinkage": self.shrinkage}

    def validate(self, hidden_size: int) -> None:
        """Every tensor has the shape its views, layers, categories and ``hidden_size`` imply (ValueError)."""
        unknown = [view for view in self.views if view not in VIEWS]
        if unknown:
            raise ValueError(f"unknown views {unknown}; this latent-guardrail knows {list(VIEWS)}")
        v, k, c, d = len(self.views), len(self.layers), len(self.categories), hidden_size
        shapes = {"directions": (self.directions, (v, k, d)), "midpoints": (self.midpoints, (v, k, d)),
                  "category_directions": (self.category_directions, (c, v, k, d)),
                  "category_midpoints": (self.category_midpoints, (c, v, k, d)),
                  "category_calibration": (self.category_calibration, (c, 2))}
        check_scorer_tensors(self.tensor_prefix, shapes, [self.threshold, *self.calibration])

    @classmethod
    def from_tensors(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     centroids: Centroids) -> TunedScorer:
        """The tuned scorer of ``config()`` and ``to_tensors()``."""
        p = cls.tensor_prefix
        return cls(
            config["layers"], tensors[f"{p}directions"], tensors[f"{p}midpoints"],
            tuple(config["calibration"]), float(config["threshold"]), config.get("categories", []),
            tensors[f"{p}category_directions"], tensors[f"{p}category_midpoints"],
            tensors[f"{p}category_calibration"], shrinkage=float(config.get("shrinkage", 0.5)),
            views=config.get("views", ["t_inst"]),
        )


def fit_paper(centroids: Centroids, threshold: float = 0.0) -> PaperScorer:
    """The paper's rule on all layers of ``centroids`` with α = ``threshold`` (0 in the paper)."""
    return PaperScorer(centroids, threshold)


def _cv_scores(pos: torch.Tensor, neg: torch.Tensor, gammas: Sequence[float],
               folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold z-scores of every (view, layer) and γ.

    Args:
        pos, neg: ``(n, views, layers, d)``.

    Returns:
        pos ``(γ, n_pos, views, layers)``, neg ``(γ, n_neg, views, layers)``.
    """
    _, n_views, n_layers, _ = pos.shape
    out_pos = np.zeros((len(gammas), pos.shape[0], n_views, n_layers))
    out_neg = np.zeros((len(gammas), neg.shape[0], n_views, n_layers))
    for test_p, test_n in folds:
        tp, tn = torch.from_numpy(test_p), torch.from_numpy(test_n)
        for view in range(n_views):
            for layer in range(n_layers):
                ws, mid = _lda_directions(pos[~tp, view, layer], neg[~tn, view, layer], gammas)
                for g, w in enumerate(ws):
                    out_pos[g, test_p, view, layer] = _project(pos[tp, view, layer], w, mid).numpy()
                    out_neg[g, test_n, view, layer] = _project(neg[tn, view, layer], w, mid).numpy()
    return out_pos, out_neg


def _fit_directions(pos: torch.Tensor, neg: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions and midpoints ``(views, layers, d)`` for states ``(n, views, layers, d)``."""
    dirs = torch.zeros(pos.shape[1:], dtype=_F64)
    mids = torch.zeros(pos.shape[1:], dtype=_F64)
    for view in range(pos.shape[1]):
        for layer in range(pos.shape[2]):
            dirs[view, layer], mids[view, layer] = _lda_direction(pos[:, view, layer], neg[:, view, layer], gamma)
    return dirs, mids


def fit_tuned(harmful: torch.Tensor, harmless: torch.Tensor, layers: Sequence[int],
              categories: Sequence[str | None] | None = None,
              options: TunedOptions | None = None,
              views: Sequence[str] = ("t_inst",)) -> tuple[TunedScorer, dict[str, Any]]:
    """Fit the tuned rule on residual states.

    Args:
        harmful: ``(n_h, len(views), len(layers), d)`` (or ``(n_h, len(layers), d)`` for one view);
            harmless likewise.
        layers: the residual layers those states come from.
        categories: per harmful row, its risk category (or None).
        views: the views those states hold, e.g. ``("t_inst", "content_mean")``.

    Returns:
        (scorer, report) — the report holds the CV AUROC per layer and shrinkage, the chosen views and window,
        and held-out rates, for plots and the calibration summary.
    """
    opts = options if options is not None else TunedOptions()
    pos = _check_states(harmful, len(layers), views)
    neg = _check_states(harmless, len(layers), views)
    if min(pos.shape[0], neg.shape[0]) < max(opts.folds, 4):
        raise CalibrationError(f"tuned mode needs at least {max(opts.folds, 4)} examples per class; "
                               f"got {pos.shape[0]} harmful and {neg.shape[0]} harmless")
    allowed = [i for i, layer in enumerate(layers) if opts.max_layer is None or layer <= opts.max_layer]
    if not allowed:
        raise CalibrationError(f"no layer at or below max_layer={opts.max_layer}")
    candidates = [vs for vs in opts.view_sets if all(v in views for v in vs)]
    if not candidates:
        raise CalibrationError(f"none of the view sets {opts.view_sets} is available in views {tuple(views)}")
    used_views = sorted({v for vs in candidates for v in vs}, key=list(views).index)
    pos_a = pos[:, [list(views).index(v) for v in used_views]][:, :, allowed]
    neg_a = neg[:, [list(views).index(v) for v in used_views]][:, :, allowed]
    folds = _folds(pos.shape[0], neg.shape[0], opts.folds, opts.seed)
    window = max(1, min(opts.num_layers, len(allowed)))
    all_zp, all_zn = _cv_scores(pos_a, neg_a, opts.shrinkage, folds)
    best: tuple[float, float, tuple[str, ...], int, np.ndarray, np.ndarray] | None = None
    per_layer_auc: dict[str, dict[int, float]] = {}
    for gamma, zp, zn in zip(opts.shrinkage, all_zp, all_zn, strict=True):
        for v, view in enumerate(used_views):
            per_layer_auc[f"{view}@{gamma}"] = {layers[i]: auroc(zp[:, v, j], zn[:, v, j]) or 0.5
                                                for j, i in enumerate(allowed)}
        for view_set in candidates:
            vidx = [used_views.index(v) for v in view_set]
            for start in range(len(allowed) - window + 1):
                mp = zp[:, vidx, start:start + window].mean(axis=(1, 2))
                mn = zn[:, vidx, start:start + window].mean(axis=(1, 2))
                value = auroc(mp, mn) or 0.5
                if best is None or value > best[0] + 1e-4:
                    best = (value, gamma, view_set, start, mp, mn)
    if best is None:
        raise CalibrationError("no shrinkage candidates given")
    cv_auc, gamma, view_set, start, oof_pos, oof_neg = best
    chosen = allowed[start:start + window]
    vsel = [list(views).index(v) for v in view_set]
    z = np.concatenate([oof_pos, oof_neg])
    y = np.concatenate([np.ones(len(oof_pos)), np.zeros(len(oof_neg))])
    a, b = _platt(z, y)
    logit_neg = a * oof_neg + b
    threshold = 0.0 if opts.target_fpr is None else max(0.0, threshold_at_fpr(logit_neg, opts.target_fpr))
    pos_c, neg_c = pos[:, vsel][:, :, chosen], neg[:, vsel][:, :, chosen]
    dirs, mids = _fit_directions(pos_c, neg_c, gamma)
    cat_names: list[str] = []
    cat_dirs, cat_mids, cat_cal = [], [], []
    for name in sorted({c for c in (categories or []) if c is not None}):
        rows = [i for i, c in enumerate(categories or []) if c == name]
        if len(rows) < 2:
            continue
        cdir, cmid = _fit_directions(pos_c[rows], neg_c, gamma)
        zc_p = ((pos_c[rows] - cmid) * cdir).sum(-1).mean(dim=(1, 2))
        zc_n = ((neg_c - cmid) * cdir).sum(-1).mean(dim=(1, 2))
        yc = np.concatenate([np.ones(len(rows)), np.zeros(neg.shape[0])])
        cat_names.append(name)
        cat_dirs.append(cdir)
        cat_mids.append(cmid)
        cat_cal.append(torch.tensor(_platt(torch.cat([zc_p, zc_n]).numpy(), yc), dtype=_F64))
    empty = torch.zeros(0, *dirs.shape, dtype=_F64)
    scorer = TunedScorer(
        [layers[i] for i in chosen], dirs, mids, (a, b), threshold, cat_names,
        torch.stack(cat_dirs) if cat_dirs else empty, torch.stack(cat_mids) if cat_mids else empty,
        torch.stack(cat_cal) if cat_cal else torch.zeros(0, 2, dtype=_F64), shrinkage=gamma, views=view_set,
    )
    report = {
        "cv_auroc": cv_auc,
        "shrinkage": gamma,
        "views": list(view_set),
        "layers": list(scorer.layers),
        "per_layer_cv_auroc": per_layer_auc,
        "heldout_detect_rate": float((a * oof_pos + b >= threshold).mean()),
        "heldout_pass_rate": float((logit_neg < threshold).mean()),
    }
    return scorer, report
