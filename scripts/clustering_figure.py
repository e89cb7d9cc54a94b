"""The paper's clustering picture (its Figure 2) on the default host: t_inst clusters by harmfulness, t_post-inst
by refusal.

    nice flock /tmp/heavy.lock .venv/bin/python scripts/clustering_figure.py [--readme] [--quick]

The host answers every prompt greedily under the safety system prompt (the refusal phrase judge of
:mod:`latent_guardrail.refusal` reads the answer), which splits the prompts into refused-harmful, accepted-harmful,
accepted-harmless and refused-harmless. Their residual states at t_inst (last instruction token) and t_post-inst
(last prompt token), rendered exactly as the host answered them, are read at every layer. Written to docs/results/:

- ``clustering_pca.png``: 2-D PCA of the t_inst and t_post-inst states of the four groups at two layers (the
  evaluation report's PCA projection, :mod:`latent_guardrail.evaluation.report`);
- ``clustering_layers.png``: per layer, how well each position separates harmful from harmless prompts and
  refused from accepted ones — the AUROC of the centroid score cos(h, μ_a) − cos(h, μ_b), two-fold cross-fitted
  (centroids from one half, scored on the other), and where the two mixed groups fall: the share of
  accepted-harmful prompts on the harmful side at t_inst and on the refuse side at t_post-inst;
- ``clustering.json``: the numbers. ``--readme`` writes the section between ``<!-- clustering:start -->`` and
  ``<!-- clustering:end -->`` in README.md and docs/evaluation.md.

Prompts (none from the calibration sets; fixed samples, seed 0, sized for 2 shared CPU cores): 60 of the project's
held-out harmful prompts (``heldout/harmful_*``), 60 of its held-out harmless ones (``heldout/harmless_twins``,
``heldout/harmless_sensitive``), 60 XSTest unsafe and 100 XSTest safe prompts (where the host over-refuses) and 40
AdvBench rows 100–519, the last two read by path from ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latent_guardrail.activations import extract_states  # noqa: E402
from latent_guardrail.datasets import read_prompts  # noqa: E402
from latent_guardrail.evaluation.report import _BEHAVIOUR_COLOURS, _pca_2d  # noqa: E402
from latent_guardrail.evaluation.runner import BEHAVIOURS  # noqa: E402
from latent_guardrail.generation import generate_replies  # noqa: E402
from latent_guardrail.hosts import Host, load_host  # noqa: E402
from latent_guardrail.metrics import auroc  # noqa: E402
from latent_guardrail.positions import encode_prompt  # noqa: E402
from latent_guardrail.refusal import PhraseJudge  # noqa: E402
from latent_guardrail.settings import SAFETY_SYSTEM_PROMPT  # noqa: E402

START, END = "<!-- clustering:start -->", "<!-- clustering:end -->"
SHARED = ROOT.parent / "shared" / "data"
HELDOUT = ROOT / "heldout"
VIEWS = ("t_inst", "t_post_inst")


def _sample(rows: list[str], n: int, seed: int = 0) -> list[str]:
    return rows if len(rows) <= n else random.Random(seed).sample(rows, n)


def prompt_sets(quick: bool) -> tuple[list[str], list[str]]:
    """(harmful, harmless) prompts, all outside the calibration sets."""
    cap = 12 if quick else 60
    harmful = _sample([r.text for name in ("harmful_plain", "harmful_framed", "harmful_persuasion")
                       for r in read_prompts(HELDOUT / f"{name}.jsonl", label="harmful")], cap)
    harmless = _sample([r.text for name in ("harmless_twins", "harmless_sensitive")
                        for r in read_prompts(HELDOUT / f"{name}.jsonl", label="harmless")], cap)
    xstest = read_prompts(SHARED / "xstest" / "xstest_prompts.csv")
    harmful += _sample([r.text for r in xstest if r.label == "harmful"], 6 if quick else 60)
    harmless += _sample([r.text for r in xstest if r.label == "harmless"], 6 if quick else 100)
    advbench = [r.text for r in read_prompts(SHARED / "advbench" / "harmful_behaviors.csv", text_column="goal")]
    harmful += _sample(advbench[100:520], 6 if quick else 40)
    return harmful, harmless


def read_host(host: Host, prompts: Sequence[str], max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Refused flags ``(n,)`` and states ``(n, 2, layers, d)`` (t_inst, t_post-inst; every layer) of ``prompts``
    under the safety system prompt."""
    encodings = [encode_prompt(host.tokenizer, prompt, system_prompt=SAFETY_SYSTEM_PROMPT) for prompt in prompts]
    judge = PhraseJudge()
    with host.lock:
        replies = generate_replies(host.model, host.tokenizer, encodings, max_new_tokens=max_new_tokens)
        states = extract_states(host.model, encodings, list(range(host.num_blocks + 1)),
                                pad_token_id=host.tokenizer.pad_token_id, views=VIEWS, batch_size=16)
    return np.array([judge(reply) for reply in replies]), states.double().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cross_fitted_scores(states: np.ndarray, positive: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold centroid scores cos(h, μ_pos) − cos(h, μ_neg) of ``states`` ``(n, d)`` (two folds)."""
    order = np.random.default_rng(seed).permutation(len(states))
    fold = np.zeros(len(states), dtype=bool)
    fold[order[: len(states) // 2]] = True
    scores = np.zeros(len(states))
    unit = _unit(states)
    for held in (fold, ~fold):
        fit = ~held
        mu_pos, mu_neg = states[fit & positive].mean(0), states[fit & ~positive].mean(0)
        scores[held] = unit[held] @ _unit(mu_pos) - unit[held] @ _unit(mu_neg)
    return scores


def separation(states: np.ndarray, harmful: np.ndarray, refused: np.ndarray) -> dict[str, Any]:
    """Per view and layer: AUROC for harmfulness and for refusal, and where the mixed groups fall."""
    out: dict[str, Any] = {}
    accepted_harmful, refused_harmless = harmful & ~refused, ~harmful & refused
    for v, view in enumerate(VIEWS):
        rows: dict[str, list[float | None]] = {"harmfulness": [], "refusal": [], "accepted_harmful_as_harmful": [],
                                               "accepted_harmful_as_refuse": [], "refused_harmless_as_harmful": [],
                                               "refused_harmless_as_refuse": []}
        for layer in range(states.shape[2]):
            x = states[:, v, layer]
            by_harm = cross_fitted_scores(x, harmful)
            by_refusal = cross_fitted_scores(x, refused) if 0 < refused.sum() < len(refused) else np.zeros(len(x))
            rows["harmfulness"].append(auroc(by_harm[harmful], by_harm[~harmful]))
            rows["refusal"].append(auroc(by_refusal[refused], by_refusal[~refused]))
            for group, mask in (("accepted_harmful", accepted_harmful), ("refused_harmless", refused_harmless)):
                rows[f"{group}_as_harmful"].append(float((by_harm[mask] > 0).mean()) if mask.any() else None)
                rows[f"{group}_as_refuse"].append(float((by_refusal[mask] > 0).mean()) if mask.any() else None)
        out[view] = rows
    return out


def _groups(harmful: np.ndarray, refused: np.ndarray) -> dict[str, np.ndarray]:
    return {"refused-harmful": harmful & refused, "accepted-harmful": harmful & ~refused,
            "accepted-harmless": ~harmful & ~refused, "refused-harmless": ~harmful & refused}


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False)


def plot_pca(states: np.ndarray, harmful: np.ndarray, refused: np.ndarray, layers: Sequence[int], path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = _groups(harmful, refused)
    fig, axes = _figure(len(layers), 2, 9.0, 3.6 * len(layers))
    for row, layer in enumerate(layers):
        for col, (view, title) in enumerate(zip(VIEWS, ("t_inst", "t_post-inst"), strict=True)):
            points = _pca_2d([states[groups[name], col, layer] for name in BEHAVIOURS])
            ax = axes[row, col]
            for name, xy in zip(BEHAVIOURS, points, strict=True):
                if len(xy):
                    ax.scatter(xy[:, 0], xy[:, 1], s=7 if name.startswith("refused-harmless") else 5,
                               alpha=0.65, color=_BEHAVIOUR_COLOURS[name], label=f"{name} ({len(xy)})")
            ax.set_title(f"{title}, layer {layer} (view {view})", fontsize=9)
            ax.legend(fontsize=6, markerscale=2)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_layers(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = _figure(1, 2, 10.0, 3.4)
    sep = result["separation"]
    layers = list(range(len(sep["t_inst"]["harmfulness"])))

    def line(values: list[float | None]) -> list[float]:
        return [np.nan if value is None else value for value in values]

    ax = axes[0, 0]
    for view, style in (("t_inst", "-"), ("t_post_inst", "--")):
        ax.plot(layers, line(sep[view]["harmfulness"]), style, color="#c0392b", label=f"{view}: harmful vs harmless")
        ax.plot(layers, line(sep[view]["refusal"]), style, color="#2e86c1", label=f"{view}: refused vs accepted")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_title("cluster separation (cross-fitted centroid AUROC)", fontsize=9)
    ax.set_xlabel("residual layer")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    ax.plot(layers, line(sep["t_inst"]["accepted_harmful_as_harmful"]), "-", color="#e67e22",
            label="accepted-harmful on the harmful side at t_inst")
    ax.plot(layers, line(sep["t_post_inst"]["accepted_harmful_as_refuse"]), "--", color="#e67e22",
            label="accepted-harmful on the refuse side at t_post-inst")
    ax.plot(layers, line(sep["t_inst"]["refused_harmless_as_harmful"]), "-", color="#8e44ad",
            label="refused-harmless on the harmful side at t_inst")
    ax.plot(layers, line(sep["t_post_inst"]["refused_harmless_as_refuse"]), "--", color="#8e44ad",
            label="refused-harmless on the refuse side at t_post-inst")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("where the mixed groups fall", fontsize=9)
    ax.set_xlabel("residual layer")
    ax.legend(fontsize=6)
    for a in axes.ravel():
        a.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _mean(values: list[float | None], layers: Sequence[int]) -> float:
    picked = [values[layer] for layer in layers if values[layer] is not None]
    return float(np.mean(picked)) if picked else float("nan")


def section(result: dict[str, Any]) -> str:
    sep, counts = result["separation"], result["counts"]
    upper = list(range(result["num_layers"] // 2, result["num_layers"]))
    rows = []
    for view in VIEWS:
        s = sep[view]
        rows.append(f"| {view} | {_mean(s['harmfulness'], upper):.3f} | {_mean(s['refusal'], upper):.3f} | "
                    f"{100 * _mean(s['accepted_harmful_as_harmful'], upper):.0f}% | "
                    f"{100 * _mean(s['accepted_harmful_as_refuse'], upper):.0f}% | "
                    f"{100 * _mean(s['refused_harmless_as_harmful'], upper):.0f}% | "
                    f"{100 * _mean(s['refused_harmless_as_refuse'], upper):.0f}% |")
    return "\n".join([
        START, "<!-- generated by scripts/clustering_figure.py from docs/results/clustering.json: do not edit by "
               "hand -->", "",
        f"The default host answered {result['prompts']} held-out prompts under the safety system prompt: "
        + ", ".join(f"{counts[name]} {name}" for name in BEHAVIOURS)
        + f". States at t_inst and t_post-inst, every layer; the figures: PCA at layers "
          f"{', '.join(str(x) for x in result['pca_layers'])}, and per layer the cross-fitted centroid AUROC for "
          "harmfulness (harmful vs harmless labels) and for refusal (refused vs accepted), with where the mixed "
          "groups fall. Means over the upper half of the layers "
          f"({upper[0]}–{upper[-1]}):", "",
        "| position | AUROC harmfulness | AUROC refusal | accepted-harmful on harmful side | accepted-harmful on "
        "refuse side | refused-harmless on harmful side | refused-harmless on refuse side |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Runtime {result['seconds']:.0f} s on {result['threads']} CPU threads.", "",
        "![PCA of t_inst and t_post-inst states by the host's behaviour](docs/results/clustering_pca.png)",
        "![cluster separation per layer](docs/results/clustering_layers.png)", "", END])


def write_section(text: str, path: Path, heading: str, image_prefix: str = "docs/results/") -> None:
    content = path.read_text(encoding="utf-8")
    text = text.replace("](docs/results/", f"]({image_prefix}")
    if START in content and END in content:
        before, rest = content.split(START, 1)
        content = before + text + rest.split(END, 1)[1]
    else:
        content = content.rstrip("\n") + f"\n\n{heading}\n\n" + text + "\n"
    path.write_text(content, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--readme", action="store_true")
    parser.add_argument("--from-json", type=Path, default=None, help="only write the sections of a result")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        torch.manual_seed(0)
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        harmful_texts, harmless_texts = prompt_sets(args.quick)
        host = load_host("default")
        refused, states = read_host(host, [*harmful_texts, *harmless_texts], args.max_new_tokens)
        harmful = np.array([True] * len(harmful_texts) + [False] * len(harmless_texts))
        sep = separation(states, harmful, refused)
        upper = range(states.shape[2] // 2, states.shape[2])
        best = max(upper, key=lambda layer: (sep["t_inst"]["harmfulness"][layer] or 0)
                   + (sep["t_post_inst"]["refusal"][layer] or 0))
        pca_layers = sorted({states.shape[2] // 3, best})
        args.out.mkdir(parents=True, exist_ok=True)
        plot_pca(states, harmful, refused, pca_layers, args.out / "clustering_pca.png")
        result = {"prompts": len(harmful), "num_layers": states.shape[2], "pca_layers": pca_layers,
                  "counts": {name: int(mask.sum()) for name, mask in _groups(harmful, refused).items()},
                  "separation": sep, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                  "quick": args.quick, "seconds": round(time.perf_counter() - started, 1)}
        (args.out / "clustering.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        plot_layers(result, args.out / "clustering_layers.png")
    text = section(result)
    if args.readme:
        write_section(text, ROOT / "README.md", "## The clustering picture: measured")
        write_section(text, ROOT / "docs" / "evaluation.md", "## The clustering picture (the paper's Figure 2)",
                      image_prefix="results/")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
