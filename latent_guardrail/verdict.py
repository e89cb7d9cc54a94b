"""The one verdict type, shared by the core and every adapter.

A :class:`Verdict` is a frozen pydantic model that explains itself: the score and the threshold
it was compared with, the per-layer and per-category scores behind it, the token positions that
were read, the scoring mode and the fingerprint of the model that produced it. Adapters (NeMo,
LangChain) only translate it; they never build their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .taxonomy import StandardCodes, standard_codes

if TYPE_CHECKING:
    from .positions import PromptEncoding

__all__ = ["Verdict", "VerdictSpan", "VerdictStatus", "VerdictTarget", "decisive_span"]

VerdictStatus = Literal["ok", "error"]
VerdictTarget = Literal["prompt", "response"]


class VerdictSpan(BaseModel):
    """The clause the verdict rests on: characters ``[start, end)`` of the content of message ``message``
    (an index into the messages as given; a plain string prompt is message 0), as judged (normalised)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    def of(self, prompt: str | Sequence[Mapping[str, str]]) -> str:
        """The span's text in ``prompt`` (the judged text; for a normalised prompt, approximately the typed one)."""
        content = prompt if isinstance(prompt, str) else prompt[self.message]["content"]
        return content[self.start:self.end]


class Verdict(BaseModel):
    """The guard's judgement of one prompt.

    ``harmful`` is the decision of the guard's policy; ``decided_by`` names the rule that made it
    (``"threshold"``: ``harmful == (score >= threshold)``). A verdict produced by the failure policy
    (``status == "error"``, ``decided_by == "failure"``) carries the reason code in ``error`` and blocks
    or allows as the policy says; its score only encodes that decision.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    harmful: bool = Field(description="True when the guard judges the instruction harmful (block it).")
    score: float = Field(description="The decision score (Δ_harmful in paper mode, calibrated log-odds in tuned mode).")
    threshold: float = Field(description="The score at or above which a prompt is judged harmful.")
    mode: str = Field(description="Scoring mode that produced the score: 'paper' or 'tuned'.")
    category: str | None = Field(default=None, description="Most likely risk category when harmful.")
    category_scores: dict[str, float] = Field(default_factory=dict, description="Score per risk category.")
    layer_scores: dict[int, float] = Field(default_factory=dict, description="Score per layer that was read.")
    layers: tuple[int, ...] = Field(default=(), description="Residual-stream layers read (0..num_layers).")
    views: tuple[str, ...] = Field(default=("t_inst",), description="What was read per layer: t_inst, content_mean.")
    t_inst: int | None = Field(default=None, description="Token index of the instruction's last token.")
    t_post_inst: int | None = Field(default=None, description="Token index of the last prompt token.")
    num_tokens: int | None = Field(default=None, description="Length of the rendered prompt in tokens.")
    truncated: bool = Field(default=False, description="The instruction was cut from the left to fit.")
    sanitized: bool = Field(default=False, description="Special-token text in the input was neutralised.")
    normalized: bool = Field(default=False, description="The text judged was the normalised one (it differed from "
                                                        "the text as typed).")
    segmented: bool = Field(default=False, description="Segment mode: the worst reading was one sentence group "
                                                       "judged on its own (span says which).")
    span: VerdictSpan | None = Field(default=None, description="The clause whose state decided (pooled scorers: the "
                                                               "highest-scoring clause end; others: the t_inst one).")
    fingerprint: str = Field(default="", description="Fingerprint of host model, tokenizer, template, system prompt.")
    weight_drift: bool = Field(default=False, description="The host carries other weights than the guard was fitted "
                                                          "on (a fine-tune, accepted with allow_weight_drift).")
    decided_by: str = Field(default="threshold",
                            description="The rule that decided: 'threshold' (score >= threshold), 'failure' "
                                        "(the default when status is 'error'), or a category rule "
                                        "('category:NAME', 'category_threshold:NAME', 'category_allow:NAME', "
                                        "'category_monitor:NAME'; see policy.CategoryPolicy).")
    monitored: tuple[str, ...] = Field(default=(), description="Monitored categories that applied (never block).")
    status: VerdictStatus = Field(default="ok", description="'ok', or 'error' when the failure policy decided.")
    error: str | None = Field(default=None, description="Reason code of the failure when status == 'error'.")
    target: VerdictTarget = Field(default="prompt", description="What was judged: 'prompt' (the user's instruction) "
                                                                "or 'response' (an answer, in its prompt's context).")
    answer_tokens: int | None = Field(default=None, ge=0, description="Response verdicts: answer tokens read.")

    @model_validator(mode="before")
    @classmethod
    def _default_rule(cls, data: Any) -> Any:
        if isinstance(data, dict) and "decided_by" not in data and data.get("status") == "error":
            return {**data, "decided_by": "failure"}
        return data

    @model_validator(mode="after")
    def _check_invariants(self) -> Verdict:
        if self.status == "ok":
            if not (math.isfinite(self.score) and math.isfinite(self.threshold)):
                raise ValueError("an 'ok' verdict needs a finite score and threshold")
            if self.decided_by == "threshold" and self.harmful != (self.score >= self.threshold):
                raise ValueError("a verdict decided by the threshold must have harmful == (score >= threshold)")
            if self.decided_by == "failure":
                raise ValueError("an 'ok' verdict is not decided by the failure policy")
            if self.error is not None:
                raise ValueError("an 'ok' verdict carries no error")
        elif self.error is None:
            raise ValueError("an 'error' verdict needs a reason code in `error`")
        elif self.decided_by != "failure":
            raise ValueError("an 'error' verdict is decided by the failure policy (decided_by='failure')")
        return self

    @property
    def margin(self) -> float:
        """How far the score lies from the threshold (positive = harmful side)."""
        return self.score - self.threshold

    @property
    def taxonomy(self) -> StandardCodes | None:
        """The standard hazard codes (Llama Guard 3, AILuminate) of ``category``, or None
        (:func:`latent_guardrail.taxonomy.standard_codes`)."""
        return standard_codes(self.category)

    @classmethod
    def from_failure(cls, reason: str, *, block: bool, mode: str, threshold: float = 0.0,
                     fingerprint: str = "", weight_drift: bool = False, target: VerdictTarget = "prompt",
                     **fields: Any) -> Verdict:
        """A verdict decided by the failure policy: blocks when ``block`` else allows.

        Its ``score`` is ``threshold ± 1`` on the side of the decision (finite, so the verdict survives JSON,
        and ``harmful == (score >= threshold)`` still holds); it measures nothing — read ``status``. ``fields``
        are further verdict fields (``truncated``, ``num_tokens`` …).
        """
        return cls(harmful=block, score=threshold + (1.0 if block else -1.0), threshold=threshold, mode=mode,
                   fingerprint=fingerprint, status="error", error=reason, decided_by="failure",
                   weight_drift=weight_drift, target=target, **fields)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.status == "error":
            return f"{'BLOCK' if self.harmful else 'ALLOW'} (failure policy: {self.error})"
        word = "HARMFUL" if self.harmful else "harmless"
        cat = f" category={self.category}" if self.category else ""
        return f"{word} score={self.score:+.4f} threshold={self.threshold:+.4f} mode={self.mode}{cat}"


def decisive_span(encoding: PromptEncoding, slot: int | None, width: int) -> VerdictSpan | None:
    """The clause behind slot ``slot`` of a ``clause_ends`` read (``width`` slots: the last ends, the first one
    repeated in front), or the clause that ends at t_inst when ``slot`` is None."""
    ends = encoding.end_clauses
    if not ends:
        return None
    if slot is None:
        index = len(ends) - 1
    elif len(ends) >= width:
        index = len(ends) - width + slot
    else:
        index = max(0, slot - (width - len(ends)))
    turn, start, end = ends[min(index, len(ends) - 1)]
    return VerdictSpan(message=encoding.user_messages[turn] if encoding.user_messages else 0, start=start, end=end)
