"""Typed, bounded settings for checking and calibrating (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["GuardSettings", "CalibrationSettings", "SAFETY_SYSTEM_PROMPT", "OnError", "OnOverflow", "Mode", "Selection"]

OnError = Literal["block", "allow", "raise"]
OnOverflow = Literal["truncate", "block"]
Mode = Literal["paper", "tuned", "pooled"]
Selection = Literal["label", "behaviour", "auto"]

SAFETY_SYSTEM_PROMPT = (
    "You are a safe assistant. If a request is harmful, illegal or dangerous, reply only: "
    "I'm sorry, I can't help with that."
)


CategoryAction = Literal["block", "allow", "monitor"]
"""What a category policy does with a category that applies."""


class GuardSettings(BaseModel):
    """How a fitted guard checks prompts. Stored in the artifact; overridable at load time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system_prompt: str | None = Field(
        default=None, description="System prompt rendered before the user's messages (part of the fingerprint).")
    threshold: float | None = Field(default=None, description="Override of the fitted threshold (None = fitted).")
    category_policy: dict[str, CategoryAction] = Field(
        default_factory=dict,
        description="Per risk category: 'block' (the default for every category), 'allow' or 'monitor' (never "
                    "blocks; reported in verdict.monitored and logged). See policy.CategoryPolicy for the rule.")
    category_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per risk category: the category score at which it applies (default: the guard's threshold). "
                    "A blocking category with its own threshold blocks even when the overall score is below.")
    max_tokens: int | None = Field(default=None, ge=16, le=1_000_000,
                                   description="Longest prompt in tokens; longer instructions are cut from the left "
                                               "(None = the model's context length).")
    max_chars: int = Field(default=100_000, ge=1, le=10_000_000,
                           description="Longest user text in characters; longer text is cut from the left first.")
    batch_size: int = Field(default=16, ge=1, le=4096, description="Prompts per forward pass.")
    on_error: OnError = Field(default="block", description="On an internal failure: block, allow, or raise.")
    on_overflow: OnOverflow = Field(
        default="truncate", description="A prompt over max_chars/max_tokens: 'truncate' (cut from the left and judge "
                                        "the rest, verdict.truncated) or 'block' (error verdict 'input_too_long').")
    layer_template: str | None = Field(default=None, description="Decoder block names, e.g. 'model.layers.{num}'.")
    steer_layer: int | None = Field(
        default=None, description="Residual layer steered by on_block='steer' (negative counts from the end; None = "
                                  "40 % of the depth; pick it with `latent-guardrail steer --sweep`).")
    steer_coeff: float = Field(default=1.0, ge=-100.0, le=100.0, allow_inf_nan=False,
                               description="Coefficient c of the refusal direction for on_block='steer'.")
    normalize: bool = Field(
        default=True, description="Judge the user's text after NFKC, removal of zero-width/control characters and "
                                  "confusable folding (verdict.normalized says when it changed anything).")
    case_fold: bool = Field(default=False, description="Also case-fold the text before judging it.")
    close_sentences: bool = Field(
        default=False, description="Also end a user message (and each piece judged alone) that stops on a letter or "
                                   "digit with a full stop before judging it: the guard reads sentence-end states.")
    typed_turns: bool = Field(
        default=True, description="A user message that types a conversation (chat-template markers, 'User:' / "
                                  "'Assistant:' lines) also has each typed user piece judged alone; the verdict is "
                                  "the worst reading (costs nothing for messages without markers).")
    quoted_values: bool = Field(
        default=True, description="A text a user message carries in quotes or data (a JSON/YAML/CSV string, an "
                                  "element's content, a code fence, a markdown quote, a field line's value) is also "
                                  "judged alone; the verdict is the worst reading (costs nothing without such values).")
    joined_turns: bool = Field(
        default=True, description="User messages that break off mid-sentence are also judged joined with the user "
                                  "messages that go on with them, so a request split across turns is read whole "
                                  "(one more reading, only for such conversations).")
    segments: bool = Field(
        default=False, description="Segment mode: also judge every group of sentences of every user message as "
                                   "an instruction of its own (same batch); the verdict is the worst reading.")
    segment_chars: int = Field(default=400, ge=20, le=100_000,
                               description="Segment mode: longest sentence group, in characters.")
    steer_fallback: bool = Field(
        default=True, description="on_block='steer': answer the canned refusal when the steered answer does not "
                                  "read as a refusal (phrase judge), so a blocked prompt never gets another answer.")
    response_threshold: float | None = Field(
        default=None, allow_inf_nan=False,
        description="Override of the response scorer's fitted threshold (None = fitted); judges answers only.")
    allow_weight_drift: bool = Field(
        default=False, description="Accept a host that is the guard's model with other weights (a fine-tune, a LoRA "
                                   "adapter merged or not): checked with the guard as fitted, every verdict marked "
                                   "weight_drift=True (measure it with `latent-guardrail drift`). Another model "
                                   "(config, tokenizer, template) is refused anyway.")

    @field_validator("category_thresholds")
    @classmethod
    def _finite_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, x in value.items() if not math.isfinite(x))
        if bad:
            raise ValueError(f"category thresholds must be finite numbers: {', '.join(bad)}")
        return value

class CalibrationSettings(BaseModel):
    """How a guard is fitted from labelled prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field(default="tuned", description="'paper' (the paper's centroid rule), 'tuned' (t_inst and the "
                                                     "content mean) or 'pooled' (every clause end of every user "
                                                     "turn, max-pooled, leave-one-family-out CV).")
    augment: int = Field(default=1, ge=0, le=8,
                         description="Pooled: wrapped copies of every prompt (the same wrapper families on both "
                                     "sides, augment.CALIBRATION_FAMILIES).")
    selection: Selection = Field(
        default="label",
        description="'label': use the labels as given; 'behaviour': keep refused-harmful and accepted-harmless "
                    "(greedy generation, refusal phrases) as in the paper; 'auto': behaviour when the host "
                    "refuses enough, else label.")
    include_accepted_harmful: bool = Field(default=True, description="Behaviour selection: also keep accepted-harmful.")
    min_per_class: int = Field(default=10, ge=2, le=100_000,
                               description="Fewest refused-harmful/accepted-harmless prompts for behaviour selection.")
    max_new_tokens: int = Field(default=128, ge=1, le=4096, description="Greedy tokens generated to judge refusal.")
    batch_size: int = Field(default=16, ge=1, le=4096)
    num_layers: int = Field(default=4, ge=1, le=512, description="Tuned: layers combined (contiguous window).")
    target_fpr: float | None = Field(default=0.05, ge=0.0, le=0.5,
                                     description="Tuned: held-out false-positive rate the threshold aims at.")
    max_layer: int | None = Field(default=None, ge=0, description="Tuned: read no layer above this (early exit).")
    threshold: float | None = Field(default=None, description="Fix the threshold instead of fitting it.")
    refusal_prompts: int = Field(default=64, ge=2, le=100_000,
                                 description="Prompts used for a contrastive refusal direction.")
    seed: int = Field(default=0, ge=0)
