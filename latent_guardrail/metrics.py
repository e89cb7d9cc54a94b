"""Small, dependency-free classification metrics on score arrays (float64)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auroc", "balanced_accuracy", "confusion", "rates", "roc_curve", "threshold_at_fpr", "tpr_at_fpr"]


def _arrays(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(scores_pos, dtype=np.float64).ravel(), np.asarray(scores_neg, dtype=np.float64).ravel()


def auroc(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` when a class is empty (undefined)."""
    pos, neg = _arrays(scores_pos, scores_neg)
    if pos.size == 0 or neg.size == 0:
        return None
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty_like(order, dtype=np.float64)
    sorted_vals = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    rank_sum = ranks[: pos.size].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def rates(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray,
          threshold: float) -> tuple[float, float]:
    """(true-positive rate, true-negative rate) for ``score >= threshold`` meaning positive."""
    pos, neg = _arrays(scores_pos, scores_neg)
    tpr = float((pos >= threshold).mean()) if pos.size else float("nan")
    tnr = float((neg < threshold).mean()) if neg.size else float("nan")
    return tpr, tnr


def balanced_accuracy(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray,
                      threshold: float) -> float:
    """Mean of the true-positive and true-negative rates at ``threshold``."""
    tpr, tnr = rates(scores_pos, scores_neg, threshold)
    return (tpr + tnr) / 2.0


def threshold_at_fpr(scores_neg: Sequence[float] | np.ndarray, fpr: float) -> float:
    """Smallest threshold whose false-positive rate on ``scores_neg`` is at most ``fpr``."""
    neg = np.sort(np.asarray(scores_neg, dtype=np.float64).ravel())
    if neg.size == 0:
        raise ValueError("need negative scores to set a threshold")
    allowed = int(np.floor(fpr * neg.size))
    if allowed <= 0:
        return float(np.nextafter(neg[-1], np.inf))
    # flag at most `allowed` negatives: threshold just above the (allowed+1)-th largest
    return float(np.nextafter(neg[neg.size - allowed - 1], np.inf))


def tpr_at_fpr(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray,
               fpr: float) -> float | None:
    """True-positive rate at the threshold of :func:`threshold_at_fpr` (at most ``fpr`` of negatives flagged).

    ``None`` when a class is empty (undefined).
    """
    pos, neg = _arrays(scores_pos, scores_neg)
    if pos.size == 0 or neg.size == 0:
        return None
    return float((pos >= threshold_at_fpr(neg, fpr)).mean())


def roc_curve(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fpr, tpr)`` arrays, each ``(k,)`` from (0, 0) to (1, 1), one point per distinct threshold.

    ``None`` when a class is empty (undefined).
    """
    pos, neg = _arrays(scores_pos, scores_neg)
    if pos.size == 0 or neg.size == 0:
        return None
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0] + [float((pos >= t).mean()) for t in thresholds])
    fpr = np.array([0.0] + [float((neg >= t).mean()) for t in thresholds])
    return fpr, tpr


def confusion(flagged_pos: Sequence[bool] | np.ndarray, flagged_neg: Sequence[bool] | np.ndarray
              ) -> dict[str, int]:
    """Confusion counts ``{"tp", "fn", "fp", "tn"}`` from the flags of positives and negatives."""
    pos = np.asarray(flagged_pos, dtype=bool).ravel()
    neg = np.asarray(flagged_neg, dtype=bool).ravel()
    return {"tp": int(pos.sum()), "fn": int((~pos).sum()), "fp": int(neg.sum()), "tn": int((~neg).sum())}
