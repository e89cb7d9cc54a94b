"""The pooled rule: score the state at every clause end of every user turn and keep the worst.

A harmful request keeps its harmful state at its own end whatever follows it (a pleasantry, a formatting
request, a fake turn, "Continue."), because a causal model's state at a token cannot see later tokens; benign
words before it cannot make that state benign either, once the model has read the request. So the guard reads
the ``clause_ends`` view — the state at the end of every clause of every user turn, in the one forward pass —
scores each with a shrinkage-LDA read-out on a window of layers, and pools by max (or a mix of the max and the
last end, chosen by cross-validation).

Fitting uses per-end labels (:class:`EndLabels`): the end of the request in a harmful prompt is harmful; every
end of a harmless prompt, and the ends *before* the request in a harmful prompt, are harmless; the others
(ends after the request, inside a wrapped harmful prompt) carry no label. Scorer choice — layer window,
shrinkage, pooling — is by **leave-one-group-out** cross-validated AUROC of the pooled prompt scores, where a
group is a family of forms or sources (:mod:`latent_guardrail.augment`), so what ships is what generalises to
a form it was not fitted on. Within-class scatter is accumulated per group once, so each held-out fit costs
one eigendecomposition per layer.

Shapes: a :class:`PooledScorer` reads states ``(n, width, len(layers), d)`` of the ``clause_ends`` view.
Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .augment import CalibrationItem, end_labels
from .centroids import Centroids, ScoreOutput, _platt, check_scorer_tensors
from .errors import CalibrationError, NumericalError
from .metrics import auroc, threshold_at_fpr
from .positions import PromptEncoding
from .views import VIEWS

__all__ = ["CategoryRows", "EndLabels", "PooledOptions", "PooledScorer", "Pooling", "finish_fit", "fit_pooled",
           "item_rows", "shrinkage_lda"]

_F64 = torch.float64
Pooling = Literal["max", "mix"]
POOLINGS: tuple[Pooling, ...] = ("max", "mix")


def _pool(slot_scores: torch.Tensor, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled score ``(n,)`` and the decisive slot ``(n,)`` of slot scores ``(n, width)`` (last slot = t_inst)."""
    best, arg = slot_scores.max(dim=1)
    if pooling == "max":
        return best, arg
    if pooling == "mix":
        return (best + slot_scores[:, -1]) / 2.0, arg
    raise ValueError(f"unknown pooling {pooling!r}: use one of {POOLINGS}")


class PooledScorer:
    """Shrinkage-LDA per layer on the clause-end states, pooled over the ends, Platt-calibrated.

    Slot score ``s_k = a · mean_l z_kl + b`` with ``z_kl = (h_kl − m_l) · w_l``; the prompt's score pools the
    ``s_k`` (``max``, or ``mix`` = mean of the max and the last end's). Category ``c`` has its own directions and
    calibration (``t_kc = a_c · mean_l z^c_kl + b_c``), read at the decisive end.

    **Category mix** (``category_mix`` λ > 0): harm is not one direction — a request can be plainly harmful along
    its own category's read-out and mild along the overall one — so an end's score also takes the best of the
    ``mixed_categories``: ``s_k = A · ((1 − λ) (a · mean_l z_kl + b) + λ · max_c t_kc) + B`` (``mix_calibration``
    = (A, B)). λ = 0 is the plain rule. ``layer_scores`` are the same sum per layer at the decisive end (with the
    category that won there), so their mean is that end's score.
    """

    mode = "pooled"
    tensor_prefix = "pooled."

    def __init__(self, layers: Sequence[int], directions: torch.Tensor, midpoints: torch.Tensor,
                 calibration: tuple[float, float], threshold: float, *, pooling: str = "max",
                 categories: Sequence[str] = (), category_directions: torch.Tensor | None = None,
                 category_midpoints: torch.Tensor | None = None, category_calibration: torch.Tensor | None = None,
                 shrinkage: float = 0.5, views: Sequence[str] = ("clause_ends",), category_mix: float = 0.0,
                 mix_calibration: tuple[float, float] = (1.0, 0.0), mixed_categories: Sequence[str] = ()) -> None:
        self.layers = tuple(int(x) for x in layers)
        self.views = tuple(views)
        self.directions = directions.to(_F64)          # (layers, d)
        self.midpoints = midpoints.to(_F64)            # (layers, d)
        self.calibration = (float(calibration[0]), float(calibration[1]))
        self.threshold = float(threshold)
        self.pooling = str(pooling)
        self.categories = tuple(categories)
        shape = (0, len(self.layers), self.directions.shape[-1])
        self.category_directions = (category_directions if category_directions is not None
                                    else torch.zeros(shape, dtype=_F64)).to(_F64)   # (C, layers, d)
        self.category_midpoints = (category_midpoints if category_midpoints is not None
                                   else torch.zeros(shape, dtype=_F64)).to(_F64)
        self.category_calibration = (category_calibration if category_calibration is not None
                                     else torch.zeros(0, 2, dtype=_F64)).to(_F64)   # (C, 2)
        self.shrinkage = float(shrinkage)
        self.category_mix = float(category_mix)
        self.mix_calibration = (float(mix_calibration[0]), float(mix_calibration[1]))
        self.mixed_categories = tuple(mixed_categories)

    def _category_layers(self, x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
        """Calibrated per-layer read-outs ``a_c · z^c_l + b_c`` ``(..., len(index), layers)`` of the categories at
        ``index``, for states ``(..., layers, d)``."""
        chosen = list(index)
        dirs, mids = self.category_directions[chosen], self.category_midpoints[chosen]          # (M, L, d)
        z = torch.einsum("...ld,mld->...ml", x, dirs) - (mids * dirs).sum(-1)                  # (..., M, L)
        cal = self.category_calibration[chosen]
        return cal[:, 0, None] * z + cal[:, 1, None]

    def slot_scores(self, states: torch.Tensor) -> torch.Tensor:
        """Per-end, per-layer log-odds ``(n, width, layers)`` of states ``(n, width, layers, d)``."""
        x = _check(states, len(self.layers), self.directions.shape[-1])
        a, b = self.calibration
        overall = a * ((x - self.midpoints) * self.directions).sum(-1) + b                   # (n, K, L)
        if self.category_mix <= 0.0:
            return overall
        per_cat = self._category_layers(x, [self.categories.index(c) for c in self.mixed_categories])  # (n, K, M, L)
        best = per_cat.mean(-1).argmax(-1, keepdim=True)                                      # (n, K, 1)
        won = torch.take_along_dim(per_cat, best[..., None], dim=2).squeeze(2)               # (n, K, L)
        big_a, big_b = self.mix_calibration
        return big_a * ((1.0 - self.category_mix) * overall + self.category_mix * won) + big_b

    def score(self, states: torch.Tensor) -> ScoreOutput:
        x = _check(states, len(self.layers), self.directions.shape[-1])
        per = self.slot_scores(x)                                             # (n, K, L)
        pooled, arg = _pool(per.mean(-1), self.pooling)
        rows = torch.arange(x.shape[0])
        if self.pooling == "max":
            layer_scores = per[rows, arg]
        else:
            layer_scores = (per[rows, arg] + per[:, -1]) / 2.0
        if self.categories:
            cats = self._category_layers(x[rows, arg], range(len(self.categories))).mean(-1)   # (n, C)
        else:
            cats = torch.zeros(x.shape[0], 0, dtype=_F64)
        return ScoreOutput(pooled, layer_scores, cats, slot=arg)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        p = self.tensor_prefix
        return {f"{p}directions": self.directions.float(), f"{p}midpoints": self.midpoints.float(),
                f"{p}category_directions": self.category_directions.float(),
                f"{p}category_midpoints": self.category_midpoints.float(),
                f"{p}category_calibration": self.category_calibration.float()}

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "views": list(self.views),
                "threshold": self.threshold, "categories": list(self.categories), "pooling": self.pooling,
                "calibration": list(self.calibration), "shrinkage": self.shrinkage,
                "category_mix": self.category_mix, "mix_calibration": list(self.mix_calibration),
                "mixed_categories": list(self.mixed_categories)}

    def validate(self, hidden_size: int) -> None:
        """Views, pooling and the shapes of every tensor fit (ValueError otherwise)."""
        if self.views != ("clause_ends",) or "clause_ends" not in VIEWS:
            raise ValueError(f"the pooled scorer reads the clause_ends view, not {self.views}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}: use one of {POOLINGS}")
        k, c, d = len(self.layers), len(self.categories), hidden_size
        shapes = {"directions": (self.directions, (k, d)), "midpoints": (self.midpoints, (k, d)),
                  "category_directions": (self.category_directions, (c, k, d)),
                  "category_midpoints": (self.category_midpoints, (c, k, d)),
                  "category_calibration": (self.category_calibration, (c, 2))}
        if not 0.0 <= self.category_mix <= 1.0:
            raise ValueError(f"category_mix must be in [0, 1], got {self.category_mix}")
        if any(name not in self.categories for name in self.mixed_categories) or (
                self.category_mix > 0.0 and not self.mixed_categories):
            raise ValueError(f"mixed_categories must be some of the categories {self.categories}, "
                             f"got {self.mixed_categories}")
        check_scorer_tensors(self.tensor_prefix, shapes, [self.threshold, *self.calibration, *self.mix_calibration])

    @classmethod
    def from_tensors(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     centroids: Centroids) -> PooledScorer:
        """The pooled scorer of ``config()`` and ``to_tensors()``."""
        p = cls.tensor_prefix
        return cls(config["layers"], tensors[f"{p}directions"], tensors[f"{p}midpoints"],
                   tuple(config["calibration"]), float(config["threshold"]), pooling=str(config["pooling"]),
                   categories=config.get("categories", []), category_directions=tensors[f"{p}category_directions"],
                   category_midpoints=tensors[f"{p}category_midpoints"],
                   category_calibration=tensors[f"{p}category_calibration"],
                   shrinkage=float(config.get("shrinkage", 0.5)), views=config.get("views", ["clause_ends"]),
                   category_mix=float(config.get("category_mix", 0.0)),
                   mix_calibration=tuple(config.get("mix_calibration", (1.0, 0.0))),
                   mixed_categories=config.get("mixed_categories", []))


def _check(states: torch.Tensor, layers: int, d: int) -> torch.Tensor:
    if states.dim() != 4 or states.shape[2] != layers or states.shape[3] != d:
        raise ValueError(f"states must be (n, width, {layers}, {d}), got {tuple(states.shape)}")
    out = states.to(_F64)
    if not torch.isfinite(out).all():
        raise NumericalError("hidden states contain NaN or inf")
    return out


# ----------------------------------------------------------------------------------------------- fitting

@dataclass(frozen=True)
class EndLabels:
    """Clause-end rows for fitting: ``prompt[r]`` the prompt row ``r`` belongs to, ``label[r]`` its label
    (1 harmful, 0 harmless, -1 none), ``last[r]`` whether it is the prompt's last end (t_inst)."""

    prompt: np.ndarray
    label: np.ndarray
    last: np.ndarray


def item_rows(items: Sequence[CalibrationItem], encodings: Sequence[PromptEncoding], prompt_of: torch.Tensor,
              end_of: torch.Tensor) -> tuple[EndLabels, np.ndarray, np.ndarray]:
    """What :func:`fit_pooled` needs besides the states, for calibration items whose clause-end rows are
    ``(prompt_of[r], end_of[r])``: the rows' :class:`EndLabels`, the prompt labels ``(n,)`` and groups ``(n,)``."""
    per_item = [end_labels(item, encoding) for item, encoding in zip(items, encodings, strict=True)]
    prompt_np, end_np = prompt_of.numpy(), end_of.numpy()
    ends = EndLabels(prompt=prompt_np, label=np.array([per_item[p][e] for p, e in zip(prompt_np, end_np, strict=True)]),
                     last=np.array([e == len(encodings[p].ends) - 1 for p, e in zip(prompt_np, end_np, strict=True)]))
    return ends, np.array([int(item.harmful) for item in items]), np.array([item.group for item in items])


@dataclass(frozen=True)
class PooledOptions:
    """Knobs of the pooled rule (chosen by cross-validation unless fixed).

    Attributes:
        num_layers: layers combined (a contiguous window).
        shrinkage: candidate shrinkage strengths γ.
        poolings: candidate poolings.
        target_fpr: the threshold lets at most this fraction of held-out harmless prompts be flagged (never
            below log-odds 0); None puts it at 0.
        max_layer: read no layer above this (lets early exit pay).
        min_layer: read no layer below this.
        category_mixes: candidate weights λ of the best category read-out in an end's score (0: the overall
            read-out alone); a λ > 0 is kept only when it raises the cross-validated AUROC.
    """

    num_layers: int = 4
    shrinkage: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8)
    poolings: tuple[Pooling, ...] = POOLINGS
    target_fpr: float | None = 0.05
    max_layer: int | None = None
    min_layer: int = 1
    category_mixes: tuple[float, ...] = (0.0, 0.5)


def shrinkage_lda(count: np.ndarray, sums: torch.Tensor, scatter: torch.Tensor, gammas: Sequence[float]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrinkage-LDA directions ``(len(gammas), d)`` and the midpoint ``(d,)`` of two classes given by their counts
    ``(2,)``, sums ``(2, d)`` and raw scatter ``Σ x xᵀ`` over both classes ``(d, d)`` (float64; overwritten).

    The within-class covariance ``S`` is shrunk towards ``s·I`` (``s`` its mean eigenvalue, the trace over ``d``):
    ``w_γ = ((1 − γ) S + γ s I)⁻¹ (μ₁ − μ₀)``, scaled to unit within-class spread. One batched Cholesky solve
    over the shrinkages (an eigendecomposition gives the same numbers to rounding and is several times slower
    on the many left-out groups of a cross-validation); a shrinkage whose matrix is not positive definite
    (γ = 0 on too few rows) falls back to least squares.
    """
    if min(count) < 2:
        raise CalibrationError("a cross-validation fold leaves fewer than 2 examples of a class")
    means = sums / torch.from_numpy(count).unsqueeze(-1)
    within = scatter.addr_(means[0], means[0], alpha=-float(count[0])).addr_(means[1], means[1],
                                                                            alpha=-float(count[1]))
    n = float(count.sum())
    d = within.shape[0]
    scale = max(float(torch.diagonal(within).sum()) / max(n - 2, 1) / d, 1e-300)
    g = torch.tensor(list(gammas), dtype=_F64)
    shrunk = within.unsqueeze(0) * ((1.0 - g) / max(n - 2, 1)).view(-1, 1, 1)           # (k, d, d)
    shrunk.diagonal(dim1=1, dim2=2).add_((g * scale).unsqueeze(-1))
    diff = means[1] - means[0]
    factor, info = torch.linalg.cholesky_ex(shrunk)                 # reads the lower triangle
    half = torch.linalg.solve_triangular(factor, diff.expand(len(g), d).unsqueeze(-1), upper=False)
    w = torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(-1)            # (k, d)
    for k in torch.nonzero(info).flatten().tolist():   # not positive definite (γ = 0 on too few rows)
        sym = (shrunk[k] + shrunk[k].T) / 2
        w[k] = torch.linalg.lstsq(sym, diff.unsqueeze(-1)).solution.squeeze(-1)
    spread = torch.sqrt(torch.clamp(((w @ within) * w).sum(-1) / max(n - 1, 1), min=0.0))     # (k,)
    if not bool(torch.isfinite(spread).all()) or bool((spread <= 0).any()):
        raise NumericalError("degenerate calibration states: zero spread along the discriminant")
    return w / spread.unsqueeze(-1), (means[0] + means[1]) / 2.0


class _Scatter:
    """Per-group, per-class sums and scatter matrices of one layer's labelled rows (float64)."""

    def __init__(self, x: torch.Tensor, y: np.ndarray, group: np.ndarray, n_groups: int) -> None:
        d = x.shape[1]
        count = np.zeros((n_groups, 2))
        sums = torch.zeros(n_groups, 2, d, dtype=_F64)
        scatter = torch.zeros(n_groups, 2, d, d, dtype=_F64)
        for g in range(n_groups):
            for c in (0, 1):
                mask = torch.from_numpy((group == g) & (y == c))
                rows = x[mask]
                count[g, c] = rows.shape[0]
                if rows.shape[0]:
                    sums[g, c] = rows.sum(0)
                    scatter[g, c] = rows.T @ rows
        self.count, self.sums, self.scatter = count, sums, scatter
        self.total_count = count.sum(0)
        self.total_sums = sums.sum(0)
        self.total_scatter = scatter.sum(0)

    def directions(self, gammas: Sequence[float], without: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Shrinkage-LDA directions (unit within-class spread, :func:`shrinkage_lda`) and midpoint, leaving group
        ``without`` out."""
        count, sums, scatter = self.total_count.copy(), self.total_sums.clone(), self.total_scatter.clone()
        if without is not None:
            count -= self.count[without]
            sums -= self.sums[without]
            scatter -= self.scatter[without]
        ws, mid = shrinkage_lda(count, sums, scatter[0] + scatter[1], gammas)
        return list(ws), mid


def _pooled_scores(slot: np.ndarray, prompt: np.ndarray, last: np.ndarray, n_prompts: int, pooling: str
                   ) -> np.ndarray:
    """Pool row scores ``(R,)`` into prompt scores ``(n_prompts,)``."""
    best = np.full(n_prompts, -np.inf)
    np.maximum.at(best, prompt, slot)
    if pooling == "max":
        return best
    final = np.zeros(n_prompts)
    final[prompt[last]] = slot[last]
    return (best + final) / 2.0


def fit_pooled(states: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray,
               layers: Sequence[int], categories: Sequence[str | None] | None = None,
               options: PooledOptions | None = None) -> tuple[PooledScorer, dict[str, Any]]:
    """Fit the pooled rule on clause-end states.

    Args:
        states: ``(R, len(layers), d)``: every clause end of every calibration prompt (float32 or float64).
        ends: per row, its prompt, its label and whether it is the prompt's last end.
        labels: ``(n_prompts,)`` 1 harmful, 0 harmless.
        groups: ``(n_prompts,)`` family ids (ints); cross-validation leaves one family out at a time.
        layers: the residual layers of ``states``.
        categories: per prompt, its risk category (harmful prompts) or None.

    Returns:
        (scorer, report) — the report holds the leave-one-group-out AUROC of every candidate, the choice,
        and held-out detection and pass rates at the threshold.
    """
    opts = options if options is not None else PooledOptions()
    n_prompts = labels.shape[0]
    if states.dim() != 3 or states.shape[0] != ends.prompt.shape[0] or states.shape[1] != len(layers):
        raise ValueError(f"states must be (rows, {len(layers)}, d), got {tuple(states.shape)}")
    if min((labels == 1).sum(), (labels == 0).sum()) < 4:
        raise CalibrationError("the pooled rule needs at least 4 harmful and 4 harmless prompts")
    allowed = [i for i, layer in enumerate(layers)
               if layer >= opts.min_layer and (opts.max_layer is None or layer <= opts.max_layer)]
    if not allowed:
        raise CalibrationError("no layer within [min_layer, max_layer]")
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    row_group = group_index[ends.prompt]
    labelled = ends.label >= 0
    gammas = list(opts.shrinkage)
    oof = np.zeros((len(gammas), ends.prompt.shape[0], len(allowed)))      # out-of-fold z of every row
    finals: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}
    for j, layer_index in enumerate(allowed):
        x = states[:, layer_index].to(_F64)
        scatter = _Scatter(x[torch.from_numpy(labelled)], ends.label[labelled], row_group[labelled], n_groups)
        for g in range(n_groups):
            test = torch.from_numpy(row_group == g)
            if not bool(test.any()):
                continue
            ws, mid = scatter.directions(gammas, g)
            held = x[test] - mid
            for k, w in enumerate(ws):
                oof[k, test.numpy(), j] = (held @ w).numpy()
        finals[layer_index] = scatter.directions(gammas, None)
    window = max(1, min(opts.num_layers, len(allowed)))
    candidates: list[dict[str, Any]] = []
    best: tuple[float, int, int, Pooling, np.ndarray] | None = None
    for k, gamma in enumerate(gammas):
        for start in range(len(allowed) - window + 1):
            rows = oof[k, :, start:start + window].mean(axis=1)
            for pooling in opts.poolings:
                scores = _pooled_scores(rows, ends.prompt, ends.last, n_prompts, pooling)
                value = auroc(scores[labels == 1], scores[labels == 0]) or 0.5
                candidates.append({"shrinkage": gamma, "layers": [layers[i] for i in allowed[start:start + window]],
                                   "pooling": pooling, "auroc": value})
                if best is None or value > best[0] + 1e-4:
                    best = (value, k, start, pooling, scores)
    assert best is not None
    cv_auc, k, start, pooling, oof_scores = best
    chosen = allowed[start:start + window]
    a, b = _platt(oof_scores, labels.astype(float))
    dirs = torch.stack([finals[i][0][k] for i in chosen])
    mids = torch.stack([finals[i][1] for i in chosen])
    overall_rows = a * oof[k, :, start:start + window].mean(axis=1) + b               # (R,) out-of-fold
    scorer, report, _ = finish_fit(states, ends, labels, groups, layers, chosen, gammas[k], pooling, (a, b), dirs, mids,
                                   overall_rows, cv_auc, candidates, categories, opts)
    return scorer, report


@dataclass(frozen=True)
class CategoryRows:
    """Out-of-fold calibrated category scores of every clause-end row, ``rows`` ``(C, R)``, one per ``names``,
    and the prompts' out-of-fold calibrated scores ``logit`` ``(n_prompts,)`` of the fitted rule."""

    names: list[str]
    rows: np.ndarray
    logit: np.ndarray


def finish_fit(states: torch.Tensor, ends: EndLabels, labels: np.ndarray, groups: np.ndarray, layers: Sequence[int],
               chosen: Sequence[int], gamma: float, pooling: Pooling, calibration: tuple[float, float],
               directions: torch.Tensor, midpoints: torch.Tensor, overall_rows: np.ndarray, cv_auc: float,
               candidates: list[dict[str, Any]], categories: Sequence[str | None] | None, options: PooledOptions
               ) -> tuple[PooledScorer, dict[str, Any], CategoryRows]:
    """The pooled rule once its overall read-out is chosen: the categories (leave-one-group-out, as the overall
    read-out), the category mix chosen by cross-validated AUROC, the Platt calibration and the threshold, and the
    fit's report.

    Args:
        states: ``(R, len(layers), d)``; ``chosen``: the indices into ``layers`` of the overall read-out's window.
        overall_rows: ``(R,)`` the overall read-out's out-of-fold calibrated row scores (its Platt ``calibration``
            fitted on their pooled prompt scores, whose AUROC is ``cv_auc``).
        candidates: the overall read-outs tried (for the report).
    """
    n_prompts = labels.shape[0]
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    row_group = group_index[ends.prompt]
    cat_names, cat_dirs, cat_mids, cat_cal, cat_rows = _fit_categories(states, ends, row_group, n_groups, categories,
                                                                       list(chosen), gamma)
    logit = _pooled_scores(overall_rows, ends.prompt, ends.last, n_prompts, pooling)
    mix, mix_cal, mixes, best_value = 0.0, (1.0, 0.0), [], cv_auc
    if cat_rows.shape[0]:
        best_rows = cat_rows.max(axis=0)
        for lam in options.category_mixes:
            mixed = _pooled_scores((1.0 - lam) * overall_rows + lam * best_rows, ends.prompt, ends.last, n_prompts,
                                   pooling)
            value = auroc(mixed[labels == 1], mixed[labels == 0]) or 0.5
            mixes.append({"category_mix": lam, "auroc": value})
            if lam > 0.0 and value > best_value + 1e-4:
                best_value, mix = value, lam
                mix_cal = _platt(mixed, labels.astype(float))
                logit = mix_cal[0] * mixed + mix_cal[1]
    threshold = 0.0 if options.target_fpr is None else max(0.0, threshold_at_fpr(logit[labels == 0],
                                                                                 options.target_fpr))
    empty = torch.zeros(0, *directions.shape, dtype=_F64)
    scorer = PooledScorer([layers[i] for i in chosen], directions, midpoints, calibration, threshold, pooling=pooling,
                          categories=cat_names, category_directions=torch.stack(cat_dirs) if cat_dirs else empty,
                          category_midpoints=torch.stack(cat_mids) if cat_mids else empty,
                          category_calibration=torch.stack(cat_cal) if cat_cal else torch.zeros(0, 2, dtype=_F64),
                          shrinkage=gamma, category_mix=mix, mix_calibration=mix_cal,
                          mixed_categories=cat_names if mix > 0.0 else ())
    by_group = {}
    for g in np.unique(groups):
        mask = groups == g
        by_group[str(g)] = {"n": int(mask.sum()), "harmful": int((labels[mask] == 1).sum()),
                            "flagged": float((logit[mask] >= threshold).mean())}
    report = {
        "cv": "leave-one-group-out", "groups": n_groups, "cv_auroc": best_value, "shrinkage": gamma,
        "pooling": pooling, "layers": list(scorer.layers), "overall_cv_auroc": cv_auc,
        "category_mix": mix, "category_mix_candidates": mixes,
        "candidates_top": sorted(candidates, key=lambda c: -float(c["auroc"]))[:10],
        "heldout_detect_rate": float((logit[labels == 1] >= threshold).mean()),
        "heldout_pass_rate": float((logit[labels == 0] < threshold).mean()),
        "heldout_by_group": by_group,
    }
    return scorer, report, CategoryRows(cat_names, cat_rows, logit)


_MAX_SLOPE = 50.0
"""Largest Platt slope per standard deviation of the scores accepted for a category's out-of-fold calibration."""


def _fit_categories(states: torch.Tensor, ends: EndLabels, row_group: np.ndarray, n_groups: int,
                    categories: Sequence[str | None] | None, chosen: list[int], gamma: float
                    ) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], np.ndarray]:
    """Per risk category: directions of its harmful ends against every harmless end (layers ``chosen``,
    shrinkage ``gamma``), Platt on those rows' leave-one-group-out scores; also every row's out-of-fold score per
    category, so calibrated, ``(C, R)`` (what the category mix is chosen on). Where the out-of-fold scores give
    no sane calibration (slope not positive, or above ``_MAX_SLOPE`` per standard deviation: few rows, a small
    host), the Platt fit is on the full fit's scores instead.

    The harmless rows' per-group sums are formed once per layer and shared by every category.
    """
    names: list[str] = []
    dirs: list[torch.Tensor] = []
    mids: list[torch.Tensor] = []
    cals: list[torch.Tensor] = []
    if not categories:
        return names, dirs, mids, cals, np.zeros((0, ends.prompt.shape[0]))
    row_cat = np.array([categories[p] if categories[p] is not None else "" for p in ends.prompt], dtype=object)
    negative = ends.label == 0
    positives = {name: (ends.label == 1) & (row_cat == name) for name in sorted({c for c in categories if c})}
    chosen_names = [name for name, positive in positives.items() if positive.sum() >= 2]
    z = np.zeros((len(chosen_names), ends.prompt.shape[0]))                # out-of-fold, mean over layers
    per_layer: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in chosen_names]
    group_rows = [torch.from_numpy(np.flatnonzero(row_group == g)) for g in range(n_groups)]
    for i in chosen:
        x = states[:, i].to(_F64)
        harmless = _Scatter(x[torch.from_numpy(negative)], np.zeros(int(negative.sum()), dtype=int),
                            row_group[negative], n_groups)                  # per group: class 0 only
        for c, name in enumerate(chosen_names):
            positive = positives[name]
            pos_rows = x[torch.from_numpy(positive)]
            pos_group = row_group[positive]
            count = harmless.total_count.copy()
            count[1] = pos_rows.shape[0]
            sums = harmless.total_sums.clone()
            sums[1] = pos_rows.sum(0)
            scatter = harmless.total_scatter[0] + pos_rows.T @ pos_rows                        # (d, d) both classes
            full, full_mid = shrinkage_lda(count, sums.clone(), scatter.clone(), [gamma])
            per_layer[c].append((full[0], full_mid))
            for g in range(n_groups):
                if not group_rows[g].numel():
                    continue
                own = pos_rows[torch.from_numpy(pos_group == g)]
                left = count - np.array([harmless.count[g, 0], own.shape[0]])
                # a group holding all but one of the category's rows (or of the harmless ones) cannot be left out:
                # its rows are scored by the full fit
                if min(left) >= 2:
                    ws, mid = shrinkage_lda(left, sums - torch.stack([harmless.sums[g, 0], own.sum(0)]),
                                            scatter - harmless.scatter[g, 0] - own.T @ own, [gamma])
                else:
                    ws, mid = full, full_mid
                z[c, group_rows[g].numpy()] += ((x[group_rows[g]] - mid) @ ws[0]).numpy() / len(chosen)
    rows = np.zeros_like(z)
    for c, name in enumerate(chosen_names):
        positive = positives[name]
        mask = positive | negative
        a, b = _platt(z[c][mask], positive[mask].astype(float))
        if not a > 0.0 or abs(a) * float(np.std(z[c][mask])) > _MAX_SLOPE:   # degenerate out-of-fold scores
            fitted = np.zeros(ends.prompt.shape[0])                            # the full fit's, mean over layers
            for i, (w, mid) in zip(chosen, per_layer[c], strict=True):
                fitted += ((states[:, i].to(_F64) - mid) @ w).numpy() / len(chosen)
            a, b = _platt(fitted[mask], positive[mask].astype(float))
        rows[c] = a * z[c] + b
        names.append(name)
        dirs.append(torch.stack([w for w, _ in per_layer[c]]))
        mids.append(torch.stack([m for _, m in per_layer[c]]))
        cals.append(torch.tensor([a, b], dtype=_F64))
    return names, dirs, mids, cals, rows

