"""How far a guard's scores move on a fine-tuned host: the check before trusting a guard on drifted weights.

A guard fitted on a base host may be applied to a fine-tune of it (same architecture, tokenizer and template,
other weights; :func:`latent_guardrail.artifact.check_fingerprint` calls that *weight drift* and refuses it unless
``allow_weight_drift``). :func:`measure_drift` scores the same prompts — by default a fixed sample of the guard's
calibration prompts (the bundled sets, which the default guard is fitted on) — with the guard on its own host and
on the fine-tuned host, and reports the mean and largest score change and the verdicts that flip.

Recalibration is advised when either limit is passed (both documented, both overridable):

- :data:`DRIFT_SHIFT_LIMIT` — mean |Δ score| above 10 % of the guard's harmful–harmless gap (mean score of the
  harmful sample minus that of the harmless sample, on the base host): the scores moved by a tenth of the
  distance the guard relies on;
- :data:`DRIFT_FLIP_LIMIT` — more than 2 % of the verdicts flip (harmful ↔ harmless).

The paper's fine-tuning attack result (harmfulness belief barely moves under 50–400 adversarial pairs) is what
makes a small drift plausible; this measures it for *your* fine-tune instead of assuming it
(``scripts/finetune_attack.py`` measures it for the attack on the default host).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from .datasets import PromptRecord, read_calibration_sets
from .errors import InputError
from .guard import LatentGuard
from .hosts import Host

__all__ = ["DRIFT_FLIP_LIMIT", "DRIFT_SHIFT_LIMIT", "DriftResult", "drift_sample", "measure_drift"]

DRIFT_SHIFT_LIMIT = 0.10
"""Mean |Δ score| / harmful–harmless gap above which recalibration is advised."""
DRIFT_FLIP_LIMIT = 0.02
"""Share of flipped verdicts above which recalibration is advised."""


class DriftResult(BaseModel):
    """Score changes of one guard between its own host and a fine-tuned host, on the same prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompts: int = Field(ge=1, description="Prompts scored on both hosts.")
    harmful: int = Field(ge=0, description="Of them labelled harmful.")
    harmless: int = Field(ge=0, description="Of them labelled harmless.")
    weight_drift: bool = Field(description="The fine-tuned host's weights differ from the guard's host's.")
    mean_delta: float = Field(description="Mean of score(fine-tuned) − score(base).")
    mean_abs_delta: float = Field(ge=0.0, description="Mean |Δ score|.")
    max_abs_delta: float = Field(ge=0.0, description="Largest |Δ score|.")
    gap: float | None = Field(description="Base host: mean score of the harmful minus the harmless prompts (None "
                                          "without both labels).")
    shift: float | None = Field(description="mean_abs_delta / gap (None without a positive gap).")
    flips: int = Field(ge=0, description="Verdicts that changed (harmful ↔ harmless).")
    flips_to_harmless: int = Field(ge=0, description="Harmful on the base host, harmless on the fine-tuned one.")
    flip_rate: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(description="The guard's threshold (the same on both hosts).")
    shift_limit: float = Field(description="Recalibrate above this shift.")
    flip_limit: float = Field(description="Recalibrate above this flip rate.")
    recalibrate: bool = Field(description="A limit is passed: recalibrate the guard on the fine-tuned host.")
    advice: str = Field(description="One sentence for the user.")


def drift_sample(sample: int | None = 200, seed: int = 0) -> list[PromptRecord]:
    """A fixed sample of the bundled calibration prompts: half harmful, half harmless (all when ``sample`` is None)."""
    harmful, harmless = read_calibration_sets()
    if sample is None:
        return [*harmful, *harmless]
    if sample < 2:
        raise InputError(f"the drift sample needs at least 2 prompts, got {sample}")
    rng = random.Random(seed)
    half = sample // 2
    return [*rng.sample(harmful, min(half, len(harmful))), *rng.sample(harmless, min(sample - half, len(harmless)))]


def measure_drift(guard: LatentGuard, host: Host, prompts: Sequence[PromptRecord] | None = None, *,
                  shift_limit: float = DRIFT_SHIFT_LIMIT, flip_limit: float = DRIFT_FLIP_LIMIT) -> DriftResult:
    """Score ``prompts`` with ``guard`` on its own host and on ``host`` (a fine-tune of it) and compare.

    ``prompts`` default to :func:`drift_sample` (200 bundled calibration prompts, fixed seed); their labels give
    the harmful–harmless gap that scales the shift.

    Raises:
        FingerprintMismatchError: ``host`` is another model (not the guard's with other weights).
        InputError: no prompts.
    """
    records = list(prompts) if prompts is not None else drift_sample()
    if not records:
        raise InputError("measure_drift needs at least one prompt")
    drifted = LatentGuard(host, guard.fitted, guard.settings.model_copy(update={"allow_weight_drift": True}))
    texts = [record.text for record in records]
    before = guard.check_batch(texts)
    after = drifted.check_batch(texts)
    failed = [v.error for v in [*before, *after] if v.status != "ok"]
    if failed:
        raise InputError(f"{len(failed)} checks failed while measuring drift (first: {failed[0]})")
    deltas = [b.score - a.score for a, b in zip(before, after, strict=True)]
    flips = sum(a.harmful != b.harmful for a, b in zip(before, after, strict=True))
    to_harmless = sum(a.harmful and not b.harmful for a, b in zip(before, after, strict=True))
    bad = [v.score for v, r in zip(before, records, strict=True) if r.label == "harmful"]
    good = [v.score for v, r in zip(before, records, strict=True) if r.label == "harmless"]
    gap = statistics.fmean(bad) - statistics.fmean(good) if bad and good else None
    mean_abs = statistics.fmean(abs(d) for d in deltas)
    shift = mean_abs / gap if gap is not None and gap > 0 else None
    flip_rate = flips / len(records)
    recalibrate = flip_rate > flip_limit or (shift is not None and shift > shift_limit)
    shown = "n/a" if shift is None else f"{100 * shift:.1f}%"
    if recalibrate:
        advice = (f"recalibrate on the fine-tuned host: {flips} of {len(records)} verdicts flip "
                  f"({100 * flip_rate:.1f}%, limit {100 * flip_limit:.0f}%) and scores moved by {shown} of the "
                  f"harmful–harmless gap (limit {100 * shift_limit:.0f}%)")
    else:
        advice = (f"the guard holds on the fine-tuned host: {flips} of {len(records)} verdicts flip "
                  f"({100 * flip_rate:.1f}%) and scores moved by {shown} of the harmful–harmless gap; load it with "
                  "allow_weight_drift=True")
    return DriftResult(prompts=len(records), harmful=len(bad), harmless=len(good), weight_drift=drifted.weight_drift,
                       mean_delta=statistics.fmean(deltas), mean_abs_delta=mean_abs,
                       max_abs_delta=max(abs(d) for d in deltas), gap=gap, shift=shift, flips=flips,
                       flips_to_harmless=to_harmless, flip_rate=flip_rate, threshold=guard.threshold,
                       shift_limit=shift_limit, flip_limit=flip_limit, recalibrate=recalibrate, advice=advice)
