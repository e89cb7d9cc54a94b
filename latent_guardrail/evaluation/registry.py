"""The baselines an evaluation runs beside the guards: a :class:`Baseline` protocol and its registry.

:func:`~latent_guardrail.evaluation.runner.evaluate` runs the baselines named in
:attr:`EvalSettings.baselines <latent_guardrail.evaluation.settings.EvalSettings.baselines>` by looking them up
in :data:`BASELINES`; each scores every set on the guards' host (through the result cache) and says its
threshold. Adding a baseline is one class here, one entry in :data:`BASELINES` and its name in
:data:`~latent_guardrail.evaluation.settings.BaselineName`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np

from ..datasets import read_calibration_sets
from ..errors import InputError
from ..hosts import Host
from ..metrics import threshold_at_fpr
from ..refusal import REFUSAL_PHRASES, PhraseJudge
from .baselines import host_replies, keyword_judge_scores, perplexity_scores, self_check_scores
from .cache import ResultCache, content_key
from .sets import EvalSet
from .settings import EvalSettings

__all__ = [
    "BASELINES",
    "Baseline",
    "BaselineRun",
    "BaselineScores",
    "KeywordBaseline",
    "PerplexityBaseline",
    "SelfCheckBaseline",
    "get_baseline",
]


@dataclass(frozen=True)
class BaselineRun:
    """What a baseline reads: the host, its identity (for cache keys), the settings and the result cache.

    ``reference_harmless``: harmless prompts that set a threshold (the perplexity heuristic's; None: the bundled
    harmless calibration set).
    """

    host: Host
    host_id: str
    settings: EvalSettings
    store: ResultCache
    reference_harmless: Sequence[str] | None = None

    def progress(self, label: str) -> str | bool:
        """``label`` as a progress-bar title when the settings show progress, else False."""
        return label if self.settings.progress else False


@dataclass
class BaselineScores:
    """What one baseline found: its threshold and, per set name, scores ``(n,)`` float64 and truncated counts.

    ``replies`` and ``refused`` (per set: the host's answers and whether each was a refusal) come from a baseline
    that reads the host's answers; they give the report its host-behaviour table. ``reference_count``: how
    many reference prompts set the threshold (None: none did).
    """

    threshold: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    replies: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, np.ndarray] = field(default_factory=dict)
    reference_count: int | None = None


class Baseline(Protocol):
    """A rule run on the guards' host for comparison: flagged iff its score is at or above its threshold."""

    @property
    def name(self) -> str:
        """Registry key and rule name in the report."""
        ...

    @property
    def title(self) -> str:
        """One line describing the rule (the report's description)."""
        ...

    def run(self, run: BaselineRun, sets: Sequence[EvalSet]) -> BaselineScores:
        """Score every set of ``sets`` (cached in ``run.store``).

        Raises:
            InputError: the baseline cannot run with these inputs (the message says why).
        """
        ...

    def notes(self, settings: EvalSettings) -> list[str]:
        """Notes the report carries when this baseline ran with ``settings``."""
        ...


class KeywordBaseline:
    """The host answers each prompt (greedy) and a refusal-phrase judge reads the answer: 1 refused, 0 not."""

    name = "keyword"
    title = "keyword judge on the host's answer"

    def run(self, run: BaselineRun, sets: Sequence[EvalSet]) -> BaselineScores:
        """Replies (cached per set), their keyword scores, and the host's refusals (threshold 0.5)."""
        cfg = run.settings
        judge = PhraseJudge()
        out = BaselineScores(threshold=0.5)
        for s in sets:
            key = content_key("replies", run.host_id, cfg.behaviour_system_prompt, cfg.max_new_tokens,
                              list(REFUSAL_PHRASES), list(s.texts))

            def answer(s: EvalSet = s) -> dict[str, list[str] | list[bool]]:
                replies, cut = host_replies(run.host, s.texts, system_prompt=cfg.behaviour_system_prompt,
                                            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                            progress=run.progress(f"{s.name}: host answers"))
                return {"replies": replies, "truncated": cut}

            value = run.store.json(key, answer)
            out.replies[s.name] = list(value["replies"])
            out.scores[s.name] = keyword_judge_scores(value["replies"], judge)
            out.refused[s.name] = out.scores[s.name] > 0.5
            out.truncated[s.name] = int(sum(value["truncated"]))
        return out

    def notes(self, settings: EvalSettings) -> list[str]:
        """Which system prompt the host answered under (when there was one)."""
        if settings.behaviour_system_prompt is None:
            return []
        return ["the keyword judge reads the host's answers under the safety system prompt "
                f"{settings.behaviour_system_prompt!r}; the guards read the prompts as they were calibrated."]


class SelfCheckBaseline:
    """The host is asked whether to block the prompt: log-odds of "Yes" over "No", harmful iff > 0."""

    name = "self_check"
    title = "prompted self-check (Yes/No log-odds)"

    def run(self, run: BaselineRun, sets: Sequence[EvalSet]) -> BaselineScores:
        """Self-check log-odds per set (cached; threshold 0)."""
        cfg = run.settings
        out = BaselineScores(threshold=0.0)
        for s in sets:
            key = content_key("self_check", run.host_id, cfg.self_check_prompt, list(s.texts))

            def score(s: EvalSet = s) -> dict[str, np.ndarray]:
                values, cut = self_check_scores(run.host, s.texts, prompt=cfg.self_check_prompt,
                                                batch_size=cfg.batch_size,
                                                progress=run.progress(f"{s.name}: self-check"))
                return {"score": values, "truncated": np.array(cut, dtype=bool)}

            arrays = run.store.arrays(key, score)
            out.scores[s.name] = arrays["score"]
            out.truncated[s.name] = int(arrays["truncated"].sum())
        return out

    def notes(self, settings: EvalSettings) -> list[str]:
        """None."""
        return []


class PerplexityBaseline:
    """Prefix/suffix perplexity of the raw text; the threshold holds a set FPR on harmless reference prompts."""

    name = "perplexity"
    title = "perplexity heuristic (prefix/suffix)"

    def run(self, run: BaselineRun, sets: Sequence[EvalSet]) -> BaselineScores:
        """Perplexity scores per set (cached) and the threshold set on the reference prompts.

        Raises:
            InputError: there are no harmless reference prompts.
        """
        cfg = run.settings
        reference = list(run.reference_harmless) if run.reference_harmless is not None else \
            [r.text for r in read_calibration_sets()[1]]
        if not reference:
            raise InputError("the perplexity heuristic needs harmless reference prompts for its threshold")

        def perplexity(texts: Sequence[str], label: str) -> dict[str, np.ndarray]:
            return {"score": perplexity_scores(run.host, texts, batch_size=cfg.batch_size,
                                               progress=run.progress(label))}

        key = content_key("perplexity", run.host_id, reference)
        ref_scores = run.store.arrays(key, lambda: perplexity(reference, "perplexity reference"))["score"]
        out = BaselineScores(threshold=threshold_at_fpr(ref_scores, cfg.perplexity_fpr),
                             reference_count=len(reference))
        for s in sets:
            key = content_key("perplexity", run.host_id, list(s.texts))
            arrays = run.store.arrays(key, lambda s=s: perplexity(s.texts, f"{s.name}: perplexity"))  # type: ignore[misc]
            out.scores[s.name] = arrays["score"]
            out.truncated[s.name] = 0
        return out

    def notes(self, settings: EvalSettings) -> list[str]:
        """None."""
        return []


BASELINES: Mapping[str, Baseline] = MappingProxyType({
    baseline.name: baseline for baseline in (KeywordBaseline(), SelfCheckBaseline(), PerplexityBaseline())})
"""Every baseline by name (the names of :data:`~latent_guardrail.evaluation.settings.BaselineName`)."""


def get_baseline(name: str) -> Baseline:
    """The registered baseline called ``name``.

    Raises:
        InputError: no baseline has that name (the message lists them).
    """
    baseline = BASELINES.get(name)
    if baseline is None:
        raise InputError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    return baseline
