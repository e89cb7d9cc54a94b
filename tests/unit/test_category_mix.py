"""The category mix of the pooled rule: an end's score also takes the best category read-out.

Checked against a plain reference, chosen by cross-validation only where it helps, validated, and carried through
the artifact (an old config without the keys is the plain rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_guardrail.centroids import Centroids
from latent_guardrail.pooled import EndLabels, PooledOptions, PooledScorer, fit_pooled

L, D, C = 3, 8, 2


def _scorer(mix: float, pooling: str = "max") -> PooledScorer:
    g = torch.Generator().manual_seed(0)
    return PooledScorer([4, 5, 6], torch.randn(L, D, generator=g, dtype=torch.float64),
                        torch.randn(L, D, generator=g, dtype=torch.float64), (1.3, -0.2), 0.0, pooling=pooling,
                        categories=["a", "b"],
                        category_directions=torch.randn(C, L, D, generator=g, dtype=torch.float64),
                        category_midpoints=torch.randn(C, L, D, generator=g, dtype=torch.float64),
                        category_calibration=torch.tensor([[0.7, 0.1], [1.9, -0.5]], dtype=torch.float64),
                        category_mix=mix, mix_calibration=(0.8, 0.3), mixed_categories=["a", "b"] if mix else ())


def _reference(scorer: PooledScorer, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prompt scores and the decisive end's category scores, by loops over ends, layers and categories."""
    a, b = scorer.calibration
    big_a, big_b = scorer.mix_calibration
    scores, cats = [], []
    for prompt in states:
        ends = []
        for end in prompt:
            overall = a * np.mean([(end[k] - scorer.midpoints[k].numpy()) @ scorer.directions[k].numpy()
                                   for k in range(L)]) + b
            per_cat = [scorer.category_calibration[c, 0].item() * np.mean(
                [(end[k] - scorer.category_midpoints[c, k].numpy()) @ scorer.category_directions[c, k].numpy()
                 for k in range(L)]) + scorer.category_calibration[c, 1].item() for c in range(C)]
            lam = scorer.category_mix
            ends.append((big_a * ((1 - lam) * overall + lam * max(per_cat)) + big_b if lam else overall, per_cat))
        best = int(np.argmax([s for s, _ in ends]))
        scores.append(ends[best][0])
        cats.append(ends[best][1])
    return np.array(scores), np.array(cats)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_the_mixed_score_matches_a_plain_reference(mix: float) -> None:
    scorer = _scorer(mix)
    states = torch.randn(5, 4, L, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = scorer.score(states)
    want, want_cats = _reference(scorer, states.numpy())
    np.testing.assert_allclose(out.score.numpy(), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.category_scores.numpy(), want_cats, rtol=1e-10, atol=1e-10)
    # the per-layer scores explain the verdict: their mean is the decisive end's score
    np.testing.assert_allclose(out.layer_scores.mean(-1).numpy(), want, rtol=1e-10, atol=1e-10)


def test_the_mix_round_trips_through_the_artifact_config() -> None:
    scorer = _scorer(0.5)
    empty = Centroids((0,), torch.zeros(1, D, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64), {})
    again = PooledScorer.from_tensors(scorer.config(), scorer.to_tensors(), empty)
    states = torch.randn(3, 2, L, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(again.score(states).score, scorer.score(states).score, rtol=1e-6, atol=1e-6)
    assert again.category_mix == 0.5 and again.mixed_categories == ("a", "b")
    old = {k: v for k, v in scorer.config().items() if k not in ("category_mix", "mix_calibration", "mixed_categories")}
    plain = PooledScorer.from_tensors(old, scorer.to_tensors(), empty)          # a version-3 config: the plain rule
    assert plain.category_mix == 0.0
    torch.testing.assert_close(plain.score(states).score, _scorer(0.0).score(states).score, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("mix", "mixed"), [(1.5, ["a"]), (-0.1, ["a"]), (0.5, []), (0.5, ["nope"])])
def test_a_bad_mix_is_refused(mix: float, mixed: list[str]) -> None:
    scorer = _scorer(0.5)
    scorer.category_mix, scorer.mixed_categories = mix, tuple(mixed)
    with pytest.raises(ValueError, match=r"category_mix|mixed_categories"):
        scorer.validate(D)


def _two_kinds_of_harm(seed: int, apart: bool = True, n: int = 60, d: int = 6
                       ) -> tuple[torch.Tensor, EndLabels, np.ndarray, np.ndarray, list[str | None]]:
    """One end per prompt: harm of kind "a" at 3·e0, of kind "b" at 3·e1; harmless prompts around 0 and around
    (1.5, 1.5), the midpoint of the two kinds, so no single direction separates both kinds from all harmless ones.
    With ``apart=False`` both kinds sit at 3·e0 and every harmless prompt around 0: one direction is enough."""
    rng = np.random.default_rng(seed)
    rows, labels, cats, groups = [], [], [], []
    for i in range(4 * n):
        kind = i % 4
        x = rng.normal(0, 0.5, (3, d))
        if kind < 2:
            x[:, kind if apart else 0] += 3.0
        elif kind == 3 and apart:
            x[:, :2] += 1.5
        rows.append(x)
        labels.append(int(kind < 2))
        cats.append("ab"[kind] if kind < 2 else None)
        groups.append(f"g{i % 6}")
    n_prompts = len(rows)
    ends = EndLabels(prompt=np.arange(n_prompts), label=np.array(labels), last=np.ones(n_prompts, dtype=bool))
    return torch.tensor(np.stack(rows)), ends, np.array(labels), np.array(groups), cats


def test_cross_validation_picks_the_mix_where_harm_has_two_directions() -> None:
    states, ends, labels, groups, cats = _two_kinds_of_harm(0)
    scorer, report = fit_pooled(states, ends, labels, groups, (1, 2, 3), cats,
                                PooledOptions(num_layers=3, target_fpr=0.1))
    assert report["category_mix"] == 0.5 and scorer.mixed_categories == ("a", "b")
    assert report["cv_auroc"] > report["overall_cv_auroc"] + 0.2
    test, _, test_labels, _, _ = _two_kinds_of_harm(1)
    flagged = scorer.score(test.unsqueeze(1)).score.numpy() >= scorer.threshold
    assert flagged[test_labels == 1].mean() > 0.9 and flagged[test_labels == 0].mean() < 0.2


def test_without_two_directions_the_mix_stays_off() -> None:
    states, ends, labels, groups, cats = _two_kinds_of_harm(0, apart=False)
    scorer, report = fit_pooled(states, ends, labels, groups, (1, 2, 3), cats, PooledOptions(num_layers=3))
    assert report["category_mix"] == 0.0 and scorer.category_mix == 0.0 and scorer.mixed_categories == ()
    assert scorer.mix_calibration == (1.0, 0.0) and report["cv_auroc"] == report["overall_cv_auroc"]
