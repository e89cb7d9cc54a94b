"""Write an evaluation as Markdown and/or HTML with PNG plots.

Plots (matplotlib, Agg backend, small PNGs):

- ``scores.png``: score histograms per set for each rule with a continuous score, threshold marked;
- ``layers.png``: per-layer separation (AUROC of cos(h, μ_harmful) − cos(h, μ_harmless) at t_inst, harmful vs
  harmless sets), the layers each guard reads marked;
- ``pca.png``: 2-D PCA of the t_inst and t_post-inst states at one layer, coloured by set and by the host's
  own behaviour (refused/accepted × harmful/harmless: the paper's clustering picture);
- ``roc.png``: ROC curves of every rule, pooled over all sets and for each labelled file;
- ``categories.png``: each guard's category confusion matrix (true category against the category its verdicts
  name), when a harmful set carries categories (:mod:`latent_guardrail.evaluation.categories`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..metrics import roc_curve
from .categories import added_fpr_rows, category_rows, plot_category_confusion
from .runner import BEHAVIOURS, EvalReport, EvalResult, Metrics, RuleReport

__all__ = ["ReportFormat", "markdown_summary", "plot_all", "summary_rows", "write_report"]

ReportFormat = Literal["md", "html", "both"]

_DPI = 72
_SET_COLOURS = ("#c0392b", "#2e86c1", "#e67e22", "#27ae60", "#8e44ad", "#7f8c8d", "#d4ac0d", "#17a589")
_BEHAVIOUR_COLOURS = {"refused-harmful": "#c0392b", "accepted-harmful": "#e67e22",
                      "accepted-harmless": "#2e86c1", "refused-harmless": "#8e44ad"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------- tables

def summary_rows(result: EvalResult | EvalReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per rule, per-set rates then overall metrics."""
    report = result.report if isinstance(result, EvalResult) else result
    header = ["rule", *[f"{s.name} {'detected' if s.label == 'harmful' else 'passed'}" for s in report.sets]]
    groups = sorted({g for rule in report.rules for g in rule.groups})
    header += [f"{g} AUROC" for g in groups]
    header += ["precision", "recall", "F1", "AUROC", "TPR@1%FPR", "TPR@5%FPR"]
    rows = []
    for rule in report.rules:
        row = [rule.name]
        row += [_pct(r.rate) for r in rule.sets]
        row += [_num(rule.groups[g].auroc) if g in rule.groups else "n/a" for g in groups]
        o = rule.overall
        row += [_pct(o.precision), _pct(o.recall), _num(o.f1), _num(o.auroc),
                _pct(o.tpr_at_fpr.get("0.01")), _pct(o.tpr_at_fpr.get("0.05"))]
        rows.append(row)
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _confusion_rows(rules: Sequence[RuleReport]) -> tuple[list[str], list[list[str]]]:
    header = ["rule", "threshold", "TP", "FN", "FP", "TN", "accuracy", "balanced acc."]
    rows = []
    for rule in rules:
        o: Metrics = rule.overall
        rows.append([rule.name, f"{rule.threshold:.4g}", str(o.tp), str(o.fn), str(o.fp), str(o.tn),
                     _pct(o.accuracy), _pct(o.balanced_accuracy)])
    return header, rows


def markdown_summary(result: EvalResult, image_prefix: str | None = "") -> str:
    """The report as Markdown; images are linked as ``{image_prefix}name.png`` (None: no images)."""
    report = result.report
    parts = [f"Host `{report.host}` (fingerprint `{report.host_fingerprint}`); sets: " + ", ".join(
        f"{s.name} ({s.label}, {s.n}{', ' + str(s.truncated) + ' cut to fit' if s.truncated else ''})"
        for s in report.sets) + "."]
    header, rows = summary_rows(result)
    parts.append(_md_table(header, rows))
    parts.append("Per-set rates: share of a harmful set flagged (detected), share of a harmless set not flagged "
                 "(passed). Overall metrics pool every set (harmful = positive).")
    header, rows = _confusion_rows(report.rules)
    parts.append(_md_table(header, rows))
    descriptions = "; ".join(f"**{r.name}**: {r.description}" for r in report.rules)
    parts.append(descriptions + ".")
    parts += _category_sections(report.rules)
    if report.behaviour:
        header = ["set", *BEHAVIOURS]
        rows = [[name, *[str(counts.get(b, "")) for b in BEHAVIOURS]] for name, counts in report.behaviour.items()]
        parts.append("Host behaviour (its own greedy answers, refusal phrases):\n\n" + _md_table(header, rows))
    if report.leakage:
        parts.append("**Leakage warning**: evaluation prompts also used for calibration: " + ", ".join(
            f"{k}: {v}" for k, v in report.leakage.items()) + ".")
    if report.notes:
        parts.append("Notes:\n" + "\n".join(f"- {note}" for note in report.notes))
    if image_prefix is not None:
        plots = [*_PLOTS, *([("categories", "category confusion")] if _has_categories(report.rules) else [])]
        parts.append("\n".join(f"![{title}]({image_prefix}{name}.png)" for name, title in plots))
    return "\n\n".join(parts) + "\n"


def _has_categories(rules: Sequence[RuleReport]) -> bool:
    return any(rule.categories is not None and rule.categories.confusion for rule in rules)


def _category_sections(rules: Sequence[RuleReport]) -> list[str]:
    """Markdown: per guard, detection per category and the false positives each category adds."""
    parts = []
    for rule in rules:
        report = rule.categories
        if report is None:
            continue
        if report.detection:
            parts.append(f"**{rule.name}**: detection per category (true category from the sets; blocked = the "
                         "guard's decision, policy included):\n\n" + _md_table(*category_rows(report)))
        header, rows = added_fpr_rows(report)
        if rows:
            parts.append(f"**{rule.name}**: false positives per category on the harmless sets (added by its own "
                         "threshold = blocked although the overall score is below the threshold):\n\n"
                         + _md_table(header, rows))
    return parts


_PLOTS = (("scores", "score histograms"), ("layers", "per-layer separation"), ("pca", "PCA of hidden states"),
          ("roc", "ROC curves"))


def _html(result: EvalResult) -> str:
    report = result.report

    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    sections = [f"<h1>latent-guardrail evaluation</h1><p>Host <code>{html.escape(report.host)}</code>, "
                f"{len(report.sets)} sets, {report.seconds:.0f} s (cache {report.cache_hits} hits / "
                f"{report.cache_misses} misses).</p>"]
    sections.append("<h2>Summary</h2>" + table(*summary_rows(result)))
    sections.append("<h2>Confusion</h2>" + table(*_confusion_rows(report.rules)))
    for rule in report.rules:
        if rule.categories is not None and rule.categories.detection:
            sections.append(f"<h2>{html.escape(rule.name)}: detection per category</h2>"
                            + table(*category_rows(rule.categories)))
        if rule.categories is not None and added_fpr_rows(rule.categories)[1]:
            sections.append(f"<h2>{html.escape(rule.name)}: false positives per category</h2>"
                            + table(*added_fpr_rows(rule.categories)))
    if report.behaviour:
        rows = [[name, *[str(c.get(b, "")) for b in BEHAVIOURS]] for name, c in report.behaviour.items()]
        sections.append("<h2>Host behaviour</h2>" + table(["set", *BEHAVIOURS], rows))
    if report.leakage:
        sections.append("<p><b>Leakage warning</b>: " + html.escape(str(report.leakage)) + "</p>")
    if report.notes:
        sections.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    plots = [*_PLOTS, *([("categories", "category confusion")] if _has_categories(report.rules) else [])]
    sections += [f"<h2>{html.escape(title)}</h2><img src='{name}.png' alt='{html.escape(title)}'>"
                 for name, title in plots]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" + \
        "".join(sections) + "</body></html>\n"


# ----------------------------------------------------------------------------------------------- plots

def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _plot_scores(result: EvalResult, path: Path) -> None:
    rules = [r for r in result.report.rules if r.name != "keyword"]
    cols = min(3, len(rules))
    rows = (len(rules) + cols - 1) // cols
    fig, axes = _figure(rows, cols, 4.2 * cols, 2.8 * rows)
    for ax, rule in zip(axes.ravel(), rules, strict=False):
        values = result.data.scores[rule.name]
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        bins = np.linspace(low, high if high > low else low + 1.0, 40)
        for colour, s in zip(_SET_COLOURS * 4, result.sets, strict=False):
            ax.hist(values[s.name], bins=bins, alpha=0.45, color=colour, label=s.name, density=True)
        ax.axvline(rule.threshold, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{rule.name} (threshold {rule.threshold:.3g})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(rules):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    _save(fig, path)


def _plot_layers(result: EvalResult, path: Path) -> None:
    report = result.report
    fig, axes = _figure(1, 1, 6.0, 3.0)
    ax = axes[0, 0]
    if report.layer_separation:
        layers = sorted(report.layer_separation)
        values = [report.layer_separation[layer] for layer in layers]
        ax.plot(layers, [np.nan if v is None else v for v in values], marker="o", markersize=3, color="#2e86c1",
                label="per-layer AUROC (t_inst, cosine to centroids)")
        for index, (name, read) in enumerate(report.guard_layers.items()):
            if len(read) < len(layers):
                ax.axvspan(min(read) - 0.4, max(read) + 0.4, alpha=0.15, color=_SET_COLOURS[index % 8],
                           label=f"{name} reads {min(read)}–{max(read)}")
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_xlabel("residual layer")
        ax.set_ylabel("AUROC harmful vs harmless")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "needs harmful and harmless sets", ha="center")
    ax.tick_params(labelsize=7)
    _save(fig, path)


def _pca_2d(blocks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Project ``(n_i, d)`` blocks onto the top-2 principal components of their union."""
    stacked = np.concatenate(blocks).astype(np.float64)
    centred = stacked - stacked.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    out, start = [], 0
    for block in blocks:
        out.append(projected[start:start + len(block)])
        start += len(block)
    return out


def _plot_pca(result: EvalResult, path: Path, max_points: int = 300) -> None:
    data, sets = result.data, result.sets
    rng = np.random.default_rng(0)
    picks = {s.name: np.sort(rng.permutation(len(s.texts))[:max_points]) for s in sets}
    behaviour = bool(data.refused)
    fig, axes = _figure(2 if behaviour else 1, 2, 9.0, 7.0 if behaviour else 3.6)
    layer = result.report.pca_layer
    for col, (states, title) in enumerate(((data.pca_inst, "t_inst"), (data.pca_post, "t_post-inst"))):
        points = _pca_2d([states[s.name][picks[s.name]] for s in sets])
        ax = axes[0, col]
        for colour, s, xy in zip(_SET_COLOURS * 4, sets, points, strict=False):
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, color=colour, label=s.name)
        ax.set_title(f"{title}, layer {layer}: by set", fontsize=9)
        ax.legend(fontsize=6, markerscale=2)
        if behaviour:
            ax = axes[1, col]
            for name in BEHAVIOURS:
                xs = []
                for s, xy in zip(sets, points, strict=True):
                    refused = data.refused[s.name][picks[s.name]]
                    want = name.startswith("refused")
                    if s.harmful == name.endswith("-harmful"):
                        xs.append(xy[refused == want])
                chosen = np.concatenate(xs) if xs else np.zeros((0, 2))
                if len(chosen):
                    ax.scatter(chosen[:, 0], chosen[:, 1], s=6, alpha=0.6, color=_BEHAVIOUR_COLOURS[name],
                               label=f"{name} ({len(chosen)})")
            ax.set_title(f"{title}, layer {layer}: by the host's behaviour", fontsize=9)
            ax.legend(fontsize=6, markerscale=2)
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
    _save(fig, path)


def _plot_roc(result: EvalResult, path: Path) -> None:
    sets = result.sets
    pools: list[tuple[str, list[str]]] = [("all sets", [s.name for s in sets])]
    groups: dict[str, list[str]] = {}
    for s in sets:
        if s.group is not None:
            groups.setdefault(s.group, []).append(s.name)
    pools += [(g, members) for g, members in groups.items() if len(members) > 1]
    pools = pools[:3]
    fig, axes = _figure(1, len(pools), 4.0 * len(pools), 3.6)
    harmful = {s.name: s.harmful for s in sets}
    for ax, (title, members) in zip(axes.ravel(), pools, strict=True):
        for index, rule in enumerate(result.report.rules):
            scores = result.data.scores[rule.name]
            pos = [scores[m] for m in members if harmful[m]]
            neg = [scores[m] for m in members if not harmful[m]]
            curve = roc_curve(np.concatenate(pos), np.concatenate(neg)) if pos and neg else None
            if curve is None:
                continue
            auc = rule.overall.auroc if title == "all sets" else rule.groups[title].auroc
            ax.plot(curve[0], curve[1], color=_SET_COLOURS[index % 8], linewidth=1.2,
                    label=f"{rule.name} ({_num(auc)})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"ROC: {title}", fontsize=9)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    _save(fig, path)


def plot_all(result: EvalResult, folder: str | Path) -> list[Path]:
    """Write the four PNG plots (and ``categories.png`` when there are categories) into ``folder``; their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("scores", _plot_scores), ("layers", _plot_layers), ("pca", _plot_pca),
                       ("roc", _plot_roc)):
        path = out / f"{name}.png"
        draw(result, path)
        paths.append(path)
    reports = {rule.name: rule.categories for rule in result.report.rules if rule.categories is not None}
    if plot_category_confusion(reports, out / "categories.png"):
        paths.append(out / "categories.png")
    return paths


def write_report(result: EvalResult, folder: str | Path, fmt: ReportFormat = "both") -> list[Path]:
    """Write ``report.md`` and/or ``report.html``, ``results.json`` and the PNG plots into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = plot_all(result, out)
    (out / "results.json").write_text(result.report.model_dump_json(indent=2), encoding="utf-8")
    written.append(out / "results.json")
    if fmt in ("md", "both"):
        (out / "report.md").write_text("# latent-guardrail evaluation\n\n" + markdown_summary(result),
                                       encoding="utf-8")
        written.append(out / "report.md")
    if fmt in ("html", "both"):
        (out / "report.html").write_text(_html(result), encoding="utf-8")
        written.append(out / "report.html")
    return written
