"""The shrinkage LDA behind the pooled rule and the extension fits, against a plain reference."""

from __future__ import annotations


def test_shrinkage_lda_matches_the_plain_formula() -> None:
    """Cholesky shrinkage LDA against numpy's explicit inverse: w_γ ∝ ((1−γ)S + γ·tr(S)/d·I)⁻¹ (μ₁ − μ₀), unit
    within-class spread; and against the same fit with γ = 0 on too few rows (least-squares fallback)."""
    import numpy as np
    import torch

    from latent_guardrail.pooled import shrinkage_lda

    rng = np.random.default_rng(3)
    d = 12
    x0, x1 = rng.normal(size=(30, d)), rng.normal(size=(25, d)) + 0.7
    count = np.array([30.0, 25.0])
    sums = torch.tensor(np.stack([x0.sum(0), x1.sum(0)]))
    scatter = torch.tensor(x0.T @ x0 + x1.T @ x1)
    gammas = (0.05, 0.5, 0.9)
    ws, mid = shrinkage_lda(count, sums, scatter.clone(), gammas)
    m0, m1 = x0.mean(0), x1.mean(0)
    within = (x0 - m0).T @ (x0 - m0) + (x1 - m1).T @ (x1 - m1)
    cov = within / (55 - 2)
    for gamma, w in zip(gammas, ws, strict=True):
        plain = np.linalg.inv((1 - gamma) * cov + gamma * np.trace(cov) / d * np.eye(d)) @ (m1 - m0)
        plain /= np.sqrt(plain @ within @ plain / (55 - 1))
        np.testing.assert_allclose(w.numpy(), plain, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mid.numpy(), (m0 + m1) / 2, rtol=1e-12)
    few = np.array([3.0, 3.0])                                 # 6 rows in 12 dimensions: S is singular at γ = 0
    y0, y1 = x0[:3], x1[:3]
    (w0,), _ = shrinkage_lda(few, torch.tensor(np.stack([y0.sum(0), y1.sum(0)])),
                             torch.tensor(y0.T @ y0 + y1.T @ y1), (0.0,))
    assert bool(torch.isfinite(w0).all())
