"""Scoring rules against plain references; float64 whatever the input dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_guardrail.centroids import (
    PaperScorer,
    TunedOptions,
    fit_centroids,
    fit_paper,
    fit_tuned,
)
from latent_guardrail.errors import CalibrationError, NumericalError
from latent_guardrail.metrics import auroc, balanced_accuracy, threshold_at_fpr
from latent_guardrail.scorers import scorer_from_artifact


def _blobs(n: int, layers: int, d: int, shift: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=gen)
    harmful = torch.randn(n, layers, d, generator=gen) + shift * direction
    harmless = torch.randn(n, layers, d, generator=gen) - shift * direction
    return harmful, harmless


def _reference_delta(h: np.ndarray, mu_h: np.ndarray, mu_b: np.ndarray) -> np.ndarray:
    out = np.zeros(h.shape[0])
    for i in range(h.shape[0]):
        total = 0.0
        for layer in range(h.shape[1]):
            x = h[i, layer]
            total += x @ mu_h[layer] / (np.linalg.norm(x) * np.linalg.norm(mu_h[layer])) - \
                x @ mu_b[layer] / (np.linalg.norm(x) * np.linalg.norm(mu_b[layer]))
        out[i] = total / h.shape[1]
    return out


def test_paper_score_matches_plain_reference_on_fp16_states():
    harmful, harmless = _blobs(20, 5, 16, 0.5, 0)
    centroids = fit_centroids(harmful.half(), harmless.half(), range(5))
    scorer = fit_paper(centroids)
    probe = torch.randn(7, 5, 16).half()
    got = scorer.score(probe)
    ref = _reference_delta(probe.double().numpy(), harmful.half().double().mean(0).numpy(),
                           harmless.half().double().mean(0).numpy())
    assert got.score.dtype == torch.float64
    np.testing.assert_allclose(got.score.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(got.layer_scores.mean(-1).numpy(), ref, atol=1e-12)
    assert scorer.threshold == 0.0 and scorer.mode == "paper"


def test_paper_bf16_and_fp32_inputs_agree_closely():
    harmful, harmless = _blobs(30, 3, 32, 0.5, 1)
    scorer = fit_paper(fit_centroids(harmful, harmless, range(3)))
    probe = torch.randn(10, 3, 32)
    a = scorer.score(probe).score
    b = scorer.score(probe.bfloat16()).score
    assert (a - b).abs().max() < 2e-2


def test_paper_category_scores_pick_the_right_category():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(64, generator=gen)
    offsets = {name: torch.randn(64, generator=gen) * 3 for name in ("weapons", "fraud")}
    harmful = torch.stack([base + offsets[c] + 0.1 * torch.randn(64, generator=gen)
                           for c in ["weapons"] * 10 + ["fraud"] * 10]).unsqueeze(1)
    harmless = (torch.randn(20, 64, generator=gen) - base).unsqueeze(1)
    cats = ["weapons"] * 10 + ["fraud"] * 10
    scorer = fit_paper(fit_centroids(harmful, harmless, [0], cats))
    assert scorer.categories == ("fraud", "weapons")
    out = scorer.score((base + offsets["fraud"]).view(1, 1, 64))
    assert out.category_scores[0, 0] > out.category_scores[0, 1]


def test_tuned_separates_and_explains():
    harmful, harmless = _blobs(60, 6, 24, 0.35, 2)
    cats = ["a"] * 30 + ["b"] * 30
    scorer, report = fit_tuned(harmful, harmless, list(range(6)), cats, TunedOptions(num_layers=2))
    assert len(scorer.layers) == 2 and report["cv_auroc"] > 0.9
    test_h, test_b = _blobs(60, 6, 24, 0.35, 2)
    idx = list(scorer.layers)
    sh = scorer.score(test_h[:, idx])
    sb = scorer.score(test_b[:, idx])
    assert balanced_accuracy(sh.score.numpy(), sb.score.numpy(), scorer.threshold) > 0.9
    torch.testing.assert_close(sh.layer_scores.mean(-1), sh.score)
    assert sh.category_scores.shape == (60, 2)


def test_tuned_max_layer_limits_reads_and_round_trips():
    harmful, harmless = _blobs(40, 8, 16, 0.4, 4)
    scorer, _ = fit_tuned(harmful, harmless, list(range(8)), None, TunedOptions(num_layers=3, max_layer=4))
    assert max(scorer.layers) <= 4
    tensors = scorer.to_tensors()
    centroids = fit_centroids(harmful, harmless, range(8))
    again = scorer_from_artifact(scorer.config(), tensors, centroids)
    probe = harmful[:5][:, list(scorer.layers)]
    torch.testing.assert_close(again.score(probe).score, scorer.score(probe).score, atol=1e-6, rtol=1e-6)


def test_tuned_target_fpr_bounds_heldout_false_positives():
    harmful, harmless = _blobs(80, 2, 16, 0.15, 5)
    _, strict = fit_tuned(harmful, harmless, [0, 1], None, TunedOptions(num_layers=1, target_fpr=0.02))
    _, loose = fit_tuned(harmful, harmless, [0, 1], None, TunedOptions(num_layers=1, target_fpr=None))
    assert strict["heldout_pass_rate"] >= 0.98 - 1e-9
    assert strict["heldout_detect_rate"] <= loose["heldout_detect_rate"]


def test_bad_states_raise_typed_errors():
    harmful, harmless = _blobs(10, 2, 8, 1.0, 6)
    scorer = PaperScorer(fit_centroids(harmful, harmless, [0, 1]))
    bad = harmful.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(NumericalError):
        scorer.score(bad)
    with pytest.raises(ValueError, match="states must be"):
        scorer.score(harmful[:, :1])
    with pytest.raises(CalibrationError):
        fit_tuned(harmful[:3], harmless[:3], [0, 1])
    with pytest.raises(NumericalError):
        fit_centroids(bad, harmless, [0, 1])


def test_metrics():
    assert auroc([1, 2, 3], [0, -1]) == 1.0
    assert auroc([0, 0], [0, 0]) == 0.5
    assert auroc([], [1]) is None
    neg = np.arange(100.0)
    t = threshold_at_fpr(neg, 0.05)
    assert (neg >= t).mean() <= 0.05 and (neg >= t).sum() == 5


def test_tuned_can_combine_views_and_reports_the_choice():
    gen = torch.Generator().manual_seed(7)
    d, layers = 16, 3
    direction = torch.randn(d, generator=gen)
    # view 0 carries a weak signal, view 1 a strong one: CV must pick both views (or at least see view 1)
    def make(sign: float) -> torch.Tensor:
        v0 = torch.randn(60, layers, d, generator=gen) + sign * 0.05 * direction
        v1 = torch.randn(60, layers, d, generator=gen) + sign * 0.6 * direction
        return torch.stack([v0, v1], dim=1)
    harmful, harmless = make(1.0), make(-1.0)
    scorer, report = fit_tuned(harmful, harmless, list(range(layers)), None,
                               TunedOptions(num_layers=1, view_sets=(("t_inst",), ("t_inst", "content_mean"))),
                               views=("t_inst", "content_mean"))
    assert scorer.views == ("t_inst", "content_mean") and report["views"] == ["t_inst", "content_mean"]
    assert scorer.directions.shape == (2, 1, d)
    out = scorer.score(harmful[:, :, list(scorer.layers)])
    assert out.layer_scores.shape == (60, 1)
    with pytest.raises(ValueError, match="views"):
        scorer.score(harmful[:, 0, list(scorer.layers)])
