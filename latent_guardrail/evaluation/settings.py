"""What an evaluation runs and how: :class:`EvalSettings`, and the names of the baselines it can run."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..settings import SAFETY_SYSTEM_PROMPT
from .baselines import SELF_CHECK_PROMPT

__all__ = ["BASELINE_NAMES", "BaselineName", "EvalSettings"]

BaselineName = Literal["keyword", "self_check", "perplexity"]
"""The baselines of :data:`latent_guardrail.evaluation.registry.BASELINES`, by name."""
BASELINE_NAMES: tuple[BaselineName, ...] = get_args(BaselineName)
"""Every baseline, in the order an evaluation runs them by default."""


class EvalSettings(BaseModel):
    """What an evaluation runs and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baselines: tuple[BaselineName, ...] = Field(default=BASELINE_NAMES, description="Baselines run on the host.")
    max_new_tokens: int = Field(default=32, ge=1, le=4096,
                                description="Greedy tokens of the host's answer read by the keyword judge.")
    behaviour_system_prompt: str | None = Field(
        default=SAFETY_SYSTEM_PROMPT,
        description="System prompt the host answers under for the keyword judge / behaviour labels "
                    "(None: no system prompt; most small hosts then refuse nothing).")
    self_check_prompt: str = Field(default=SELF_CHECK_PROMPT, description="Self-check question with '{text}'.")
    perplexity_fpr: float = Field(default=0.05, gt=0.0, lt=1.0,
                                  description="Perplexity threshold: this false-positive rate on the reference "
                                              "harmless prompts.")
    fprs: tuple[float, ...] = Field(default=(0.01, 0.05), description="FPRs at which the TPR is reported.")
    batch_size: int = Field(default=16, ge=1, le=4096, description="Prompts per forward pass.")
    pca_layer: int | None = Field(default=None, ge=0,
                                  description="Residual layer of the PCA plots (None: the first guard's middle "
                                              "layer read, or two thirds of the depth).")
    progress: bool = Field(default=True, description="Show progress bars.")
