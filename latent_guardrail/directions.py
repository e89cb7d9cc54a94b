"""Directions in the residual stream computed from labelled states: the one place for "mean of A − mean of B".

The refusal direction (mean over refused rows − mean over accepted rows, at ``t_post_inst``) is fitted by
calibration and by :func:`latent_guardrail.steering.fit_refusal_direction`; both call :func:`mean_difference`.
"""

from __future__ import annotations

import torch

__all__ = ["mean_difference"]


def mean_difference(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``states[mask].mean(0) - states[~mask].mean(0)``: the mean of the selected rows minus that of the others.

    Args:
        states: ``(n, ...)`` states, e.g. ``(n, layers, d)``; the difference is taken in their dtype (cast
            before calling for another precision, e.g. ``.double()``, and cast the result as needed).
        mask: ``(n,)`` bool, True for the rows of the first mean (e.g. the refused prompts).

    Returns:
        ``states.shape[1:]``, the dtype of ``states``. A side with no rows gives NaN (the mean of nothing):
        callers check their class counts first.
    """
    return states[mask].mean(0) - states[~mask].mean(0)
