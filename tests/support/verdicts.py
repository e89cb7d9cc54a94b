"""Comparing verdicts of one prompt judged in different batches."""

from __future__ import annotations

from latent_guardrail.verdict import Verdict


def same_verdict(a: Verdict, b: Verdict) -> bool:
    """The same verdict up to batch-padding noise in the score (a batch pads prompts; alone they are not padded):
    the same decision, category, positions and layers, scores within 1e-5."""
    return (a.status == b.status == "ok" and a.harmful == b.harmful and a.category == b.category
            and abs(a.score - b.score) < 1e-5
            and (a.t_inst, a.num_tokens, a.truncated, a.sanitized, a.layers) ==
            (b.t_inst, b.num_tokens, b.truncated, b.sanitized, b.layers))
