"""What a fitted guard consists of: the one record calibration produces and an artifact stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .centroids import Centroids, Scorer
from .fingerprint import combine_fingerprint
from .response import ResponseScorer
from .settings import GuardSettings

__all__ = ["FittedGuard"]


@dataclass
class FittedGuard:
    """Everything a fitted guard consists of (what an artifact stores).

    ``centroids`` cover every residual layer ``0..num_blocks``; ``refusal_direction`` is ``(layers, d)``.
    ``response``: the optional response scorer (judges answers; None for a guard of prompts only).
    """

    scorer: Scorer
    centroids: Centroids
    refusal_direction: torch.Tensor | None
    refusal_source: str | None
    settings: GuardSettings
    fingerprint_parts: dict[str, str]
    num_blocks: int
    hidden_size: int
    layer_template: str
    report: dict[str, Any] = field(default_factory=dict)
    response: ResponseScorer | None = None

    @property
    def fingerprint(self) -> str:
        """One hash over the host's identity parts."""
        return combine_fingerprint(self.fingerprint_parts)
