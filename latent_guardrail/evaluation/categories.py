"""Per-category evaluation of a guard: detection per category, the category confusion matrix, and what each
category adds to the false positives of the harmless sets.

The ground truth comes from the sets: a harmful file whose rows carry a ``category`` (JSONL ``category`` key or
a CSV column of that name) gives each prompt its true category (:attr:`EvalSet.categories`). For each guard:

- **detection per category**: of the prompts of true category ``c``, the share the guard blocks (its decision,
  policy included) and the share it blocks *naming* ``c`` (``verdict.category == c``);
- **confusion matrix**: counts of true category (rows) against the category the verdict names (columns; a
  passed prompt is ``(passed)``, a blocked one without a category ``(none)``); plotted as ``categories.png``;
- **false positives per category** on every harmless set: the share blocked naming ``c``, and the share blocked
  *only* by ``c``'s own threshold (``verdict.decided_by == "category_threshold:c"``: the overall score is below
  the threshold) — what a category with a threshold of its own, such as an added topical one, adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .sets import EvalSet

__all__ = ["NONE", "PASSED", "CategoryRate", "CategoryReport", "added_fpr_rows", "category_report", "category_rows",
           "plot_category_confusion"]

PASSED = "(passed)"
NONE = "(none)"


class CategoryRate(BaseModel):
    """Prompts of one true category: how many, the share blocked, the share blocked naming that category."""

    model_config = ConfigDict(frozen=True)

    category: str
    n: int
    blocked: float
    named: float


class CategoryReport(BaseModel):
    """One guard's per-category results (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    categories: list[str] = Field(description="The guard's categories.")
    detection: list[CategoryRate] = Field(default_factory=list, description="Per true category (harmful sets).")
    confusion: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="True category → named category (or (passed) / (none)) → count.")
    harmless_named: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Harmless set → category → share blocked naming it.")
    added_fpr: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Harmless set → category → share blocked only by its own threshold.")


def category_report(categories: Sequence[str], sets: Sequence[EvalSet], blocked: Mapping[str, np.ndarray],
                    named: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> CategoryReport:
    """The per-category report of one guard.

    Args:
        categories: the guard's categories.
        blocked: per set, the guard's decisions ``(n,)`` bool.
        named: per set, the index into ``categories`` of each verdict's category ``(n,)`` (-1: none).
        own: per set, whether a category's own threshold decided ``(n,)`` bool.
    """
    names = list(categories)

    def label(index: int, is_blocked: bool) -> str:
        if not is_blocked:
            return PASSED
        return names[index] if 0 <= index < len(names) else NONE

    confusion: dict[str, dict[str, int]] = {}
    for s in sets:
        if not s.harmful or s.categories is None:
            continue
        for truth, b, index in zip(s.categories, blocked[s.name], named[s.name], strict=True):
            if truth is None:
                continue
            row = confusion.setdefault(truth, {})
            key = label(int(index), bool(b))
            row[key] = row.get(key, 0) + 1
    detection = []
    for truth in sorted(confusion):
        row = confusion[truth]
        n = sum(row.values())
        detection.append(CategoryRate(category=truth, n=n, blocked=(n - row.get(PASSED, 0)) / n,
                                      named=row.get(truth, 0) / n))
    harmless_named: dict[str, dict[str, float]] = {}
    added: dict[str, dict[str, float]] = {}
    for s in sets:
        if s.harmful:
            continue
        b, index, by_own = blocked[s.name].astype(bool), named[s.name], own[s.name].astype(bool)
        n = max(1, len(b))
        harmless_named[s.name] = {c: float((b & (index == i)).sum() / n) for i, c in enumerate(names)}
        added[s.name] = {c: float((b & by_own & (index == i)).sum() / n) for i, c in enumerate(names)}
    return CategoryReport(categories=names, detection=detection, confusion=confusion, harmless_named=harmless_named,
                          added_fpr=added)


def plot_category_confusion(reports: Mapping[str, CategoryReport], path: Path) -> bool:
    """A heat map of each guard's confusion matrix (rows normalised), saved to ``path``; False when no guard has
    labelled categories (nothing is written)."""
    shown = {name: r for name, r in reports.items() if r.confusion}
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 5.5), squeeze=False)
    for ax, (name, report) in zip(axes[0], shown.items(), strict=True):
        rows = sorted(report.confusion)
        cols = [c for c in report.categories if any(c in report.confusion[r] for r in rows)]
        cols += [c for c in rows if c not in cols] + [NONE, PASSED]
        cols = list(dict.fromkeys(cols))
        matrix = np.array([[report.confusion[r].get(c, 0) for c in cols] for r in rows], dtype=float)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xlabel("category named by the verdict")
        ax.set_ylabel("true category")
        ax.set_title(f"{name}: category confusion")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def category_rows(report: CategoryReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-category detection table."""
    header = ["category", "n", "blocked", "blocked naming it"]
    rows = [[r.category, str(r.n), f"{100 * r.blocked:.1f}%", f"{100 * r.named:.1f}%"] for r in report.detection]
    return header, rows


def added_fpr_rows(report: CategoryReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-category false positives on the harmless sets (categories that flag any)."""
    header = ["harmless set", "category", "blocked naming it", "added by its own threshold"]
    rows = []
    for name, shares in report.harmless_named.items():
        for category, share in shares.items():
            extra = report.added_fpr.get(name, {}).get(category, 0.0)
            if share or extra:
                rows.append([name, category, f"{100 * share:.1f}%", f"{100 * extra:.1f}%"])
    return header, rows
