"""Decisions: from a prompt's scores to block or allow, and the one builder of failure verdicts.

A :class:`Policy` turns :class:`Scores` into a :class:`Decision` — harmful or not, which rule decided, and the
category to report. The default :class:`ThresholdPolicy` is the guard's single fitted threshold: harmful iff
``score >= threshold``; the reported category is the highest-scoring one, only when harmful. A verdict's
``harmful`` is its decision (``verdict.decided_by`` names the rule). :class:`CategoryPolicy` adds what an
operator says per risk category (block, allow, monitor, and thresholds of their own).

:func:`failure_verdict` is the only place a failure becomes a verdict (the ``on_error`` policy: block,
allow, or raise), so every caller — checks, guarded generation, the adapters — logs and decides alike.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .errors import NumericalError
from .positions import PromptEncoding
from .settings import OnError
from .verdict import Verdict, VerdictTarget

__all__ = ["CategoryPolicy", "Decision", "Policy", "Scores", "ThresholdPolicy", "failure_reason", "failure_verdict",
           "overflow_verdict"]

logger = logging.getLogger("latent_guardrail.guard")


@dataclass(frozen=True)
class Scores:
    """What a policy decides on, for one prompt.

    Attributes:
        score: the overall score (higher = more harmful).
        threshold: the overall threshold in force.
        category_scores: score per risk category (may be empty).
    """

    score: float
    threshold: float
    category_scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """A policy's decision: ``harmful``, the rule that ``decided_by``, and the ``category`` to report."""

    harmful: bool
    decided_by: str
    category: str | None = None
    monitored: tuple[str, ...] = ()


class Policy(Protocol):
    """Turns scores into a decision."""

    def decide(self, scores: Scores) -> Decision: ...


@dataclass(frozen=True)
class ThresholdPolicy:
    """One threshold on the overall score; the category is the argmax of the category scores when harmful."""

    rule: str = "threshold"

    def decide(self, scores: Scores) -> Decision:
        harmful = scores.score >= scores.threshold
        cats = scores.category_scores
        category = max(cats, key=lambda k: cats[k]) if harmful and cats else None
        return Decision(harmful=harmful, decided_by=self.rule, category=category)


@dataclass(frozen=True)
class CategoryPolicy:
    """Per-category decisions on top of the overall threshold: **one category decides**, the prompt's own.

    A category *applies* when its score reaches its threshold (``thresholds[name]``, else the overall one);
    its *margin* is score minus that threshold. Categories not named in ``actions`` block.

    - The *candidates*: with the overall score ≥ threshold, every category that applies; below it, only those
      with a threshold of their own (a category without one applies at the overall threshold, which the prompt
      did not reach).
    - No candidate: the overall score decides (``decided_by="threshold"``; when harmful the top-scoring
      category is reported, as :class:`ThresholdPolicy`).
    - Else the candidate with the largest margin is the prompt's category and its action decides: ``block`` →
      harmful (``"category:<name>"`` at or above the overall threshold, ``"category_threshold:<name>"`` below);
      ``allow`` / ``monitor`` → not harmful (``"category_allow:<name>"`` / ``"category_monitor:<name>"`` at or
      above; below, the overall score's ``"threshold"``).
    - Monitored categories that apply are always reported (``Decision.monitored``), whatever decided.

    Why one category and not "any blocking category that applies": the bundled categories' scores share most
    of their direction (each is fitted against harmless rows), so a harmful drug request also reaches the
    weapons threshold, and "allow drugs" would never let one through. The prompt's category is what the
    verdict reports; the policy acts on it, as an operator reads the verdict. A request that mixes two
    hazards is judged by the stronger one.

    With no actions and no thresholds the decisions are those of :class:`ThresholdPolicy`.
    """

    actions: Mapping[str, str] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def decide(self, scores: Scores) -> Decision:
        cats = scores.category_scores
        margin = {name: value - self.thresholds.get(name, scores.threshold) for name, value in cats.items()}
        applies = sorted((name for name in cats if margin[name] >= 0), key=lambda k: -margin[k])
        monitored = tuple(name for name in applies if self.actions.get(name) == "monitor")
        above = scores.score >= scores.threshold
        candidates = applies if above else [name for name in applies if name in self.thresholds]
        if not candidates:
            top = max(cats, key=lambda k: cats[k]) if above and cats else None
            return Decision(above, "threshold", top, monitored)
        name = candidates[0]
        action = self.actions.get(name, "block")
        if action == "block":
            return Decision(True, f"category:{name}" if above else f"category_threshold:{name}", name, monitored)
        if above:
            return Decision(False, f"category_{action}:{name}", name, monitored)
        return Decision(False, "threshold", None, monitored)


def failure_reason(exc: BaseException) -> str:
    """The reason code of a failure: ``non_finite_states`` or ``internal_error:<ExceptionType>``."""
    return "non_finite_states" if isinstance(exc, NumericalError) else f"internal_error:{type(exc).__name__}"


def failure_verdict(exc: Exception, on_error: OnError, *, mode: str, threshold: float,
                    fingerprint: str, weight_drift: bool = False, target: VerdictTarget = "prompt") -> Verdict:
    """Apply ``on_error`` to an internal failure: a blocking or allowing error verdict, or re-raise ``exc``.

    Every failure is logged with its reason code (also as the log record's ``reason`` attribute); the verdict
    is built fresh each time (never cached).
    """
    reason = failure_reason(exc)
    logger.error("latent guard failure (%s): %s", reason, exc, extra={"reason": reason})
    if on_error == "raise":
        raise exc
    return Verdict.from_failure(reason, block=on_error == "block", mode=mode,
                                threshold=threshold if math.isfinite(threshold) else 0.0, fingerprint=fingerprint,
                                weight_drift=weight_drift, target=target)


def overflow_verdict(encoding: PromptEncoding, *, mode: str, threshold: float, fingerprint: str,
                     weight_drift: bool = False) -> Verdict:
    """The blocking verdict for a prompt cut to fit ``max_chars``/``max_tokens`` when ``on_overflow="block"``.

    ``status="error"``, ``error="input_too_long"``, ``truncated=True``; logged like every failure.
    """
    reason = "input_too_long"
    logger.warning("latent guard blocked an over-long prompt (%s): %d tokens after the cut", reason,
                   len(encoding.input_ids), extra={"reason": reason})
    return Verdict.from_failure(reason, block=True, mode=mode, threshold=threshold if math.isfinite(threshold) else 0.0,
                                fingerprint=fingerprint, weight_drift=weight_drift, truncated=True,
                                sanitized=encoding.sanitized, num_tokens=len(encoding.input_ids),
                                t_inst=encoding.t_inst, t_post_inst=encoding.t_post_inst)
