"""The registry of scoring rules, keyed by mode: how an artifact's scorer section becomes a scorer.

Every scorer follows :class:`~latent_guardrail.centroids.Scorer` (``score``, ``to_tensors``/``from_tensors``,
``config``, ``validate``, ``tensor_prefix``), so the artifact and the guard never test for a concrete class.
A new rule (a response scorer, a pooled scorer) is one class and one entry in :data:`SCORERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from .centroids import Centroids, PaperScorer, Scorer, TunedScorer
from .pooled import PooledScorer

__all__ = ["SCORERS", "Scorer", "scorer_class", "scorer_from_artifact", "scorer_tensors"]

SCORERS: Mapping[str, type[Scorer]] = MappingProxyType({
    PaperScorer.mode: PaperScorer,
    TunedScorer.mode: TunedScorer,
    PooledScorer.mode: PooledScorer,
})
"""Scorer classes by ``mode`` (read-only)."""


def scorer_class(mode: object) -> type[Scorer]:
    """The scorer class registered for ``mode``.

    Raises:
        ValueError: no scorer has that mode.
    """
    found = SCORERS.get(mode) if isinstance(mode, str) else None
    if found is None:
        raise ValueError(f"unknown scoring mode {mode!r}: expected one of {', '.join(repr(m) for m in SCORERS)}")
    return found


def scorer_tensors(mode: object, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of an artifact that belong to the scorer of ``mode`` (named with its prefix)."""
    prefix = scorer_class(mode).tensor_prefix
    return {name: value for name, value in tensors.items() if name.startswith(prefix)}


def scorer_from_artifact(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                         centroids: Centroids) -> Scorer:
    """Rebuild a scorer from its ``config()`` and ``to_tensors()`` (plus the stored centroids).

    Raises:
        ValueError: unknown mode. KeyError: a tensor or config key is missing.
    """
    return scorer_class(config.get("mode")).from_tensors(config, tensors, centroids)
