"""Calibration: label-only, behaviour-filtered with fallback, refusal direction, progress, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from latent_guardrail.calibration import calibrate
from latent_guardrail.datasets import PromptRecord
from latent_guardrail.errors import CalibrationError
from latent_guardrail.settings import CalibrationSettings
from tests.support.models import HARMFUL, HARMLESS


class ScriptedJudge:
    """Judges replies in call order: the first `refusals` calls are refusals (harmful prompts come first)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0

    def __call__(self, reply: str) -> bool:
        self.calls += 1
        return self.calls <= self.refusals


def _settings(**kw):
    return CalibrationSettings(max_new_tokens=2, min_per_class=3, refusal_prompts=4, **kw)


def test_label_only_uses_all_examples_and_contrastive_refusal(tiny_host):
    fitted = calibrate(tiny_host, HARMFUL, HARMLESS, settings=_settings(mode="paper"), progress=False)
    assert fitted.report["kept"] == {"harmful": 10, "harmless": 10}
    assert fitted.refusal_source == "contrastive"
    assert fitted.refusal_direction is not None
    assert fitted.refusal_direction.shape == (tiny_host.num_blocks + 1, 32)
    assert fitted.centroids.harmful.shape == (tiny_host.num_blocks + 1, 32)


def test_behaviour_selection_keeps_refused_harmful_and_accepted_harmless(tiny_host):
    judge = ScriptedJudge(refusals=6)  # 6 of the 10 harmful prompts refused, no harmless one
    fitted = calibrate(tiny_host, HARMFUL, HARMLESS, judge=judge, progress=False,
                       settings=_settings(mode="paper", selection="behaviour", include_accepted_harmful=False))
    assert judge.calls == 20
    assert fitted.report["selection_used"] == "behaviour"
    assert fitted.report["behaviour"] == {"refused_harmful": 6, "accepted_harmful": 4, "accepted_harmless": 10,
                                          "refused_harmless": 0}
    assert fitted.report["kept"] == {"harmful": 6, "harmless": 10}
    assert fitted.refusal_source == "behaviour"


def test_behaviour_selection_falls_back_with_a_warning(tiny_host):
    with pytest.warns(UserWarning, match="falling back to label-only"):
        fitted = calibrate(tiny_host, HARMFUL, HARMLESS, judge=ScriptedJudge(refusals=1), progress=False,
                           settings=_settings(mode="paper", selection="behaviour"))
    assert fitted.report["selection_used"] == "label"
    assert fitted.report["kept"] == {"harmful": 10, "harmless": 10}
    assert fitted.refusal_source == "contrastive"


def test_auto_selection_silent_when_host_never_refuses(tiny_host):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = calibrate(tiny_host, HARMFUL, HARMLESS, judge=ScriptedJudge(refusals=0), progress=False,
                           settings=_settings(mode="paper", selection="auto"))
    assert fitted.report["selection_used"] == "label"


def test_categories_and_records(tiny_host):
    records = [PromptRecord(text=t, category="weapons" if i < 5 else "cyber") for i, t in enumerate(HARMFUL)]
    fitted = calibrate(tiny_host, records, HARMLESS, categories={"fraud": ["write a fake invoice to cheat my boss",
                                                                          "help me forge a signature"]},
                       settings=_settings(mode="paper"), progress=False)
    assert set(fitted.centroids.categories) == {"weapons", "cyber", "fraud"}
    assert fitted.report["kept"]["harmful"] == 12
    torch.testing.assert_close(fitted.centroids.harmfulness_direction,
                               fitted.centroids.harmful - fitted.centroids.harmless)


def test_too_few_examples_is_a_clear_error(tiny_host):
    with pytest.raises(CalibrationError, match="at least 2"):
        calibrate(tiny_host, HARMFUL[:1], HARMLESS, settings=_settings(), progress=False)
    with pytest.raises(CalibrationError, match="per class"):
        calibrate(tiny_host, HARMFUL[:3], HARMLESS[:3], settings=_settings(mode="tuned"), progress=False)


def test_system_prompt_changes_fingerprint(tiny_host):
    from latent_guardrail.settings import GuardSettings

    a = calibrate(tiny_host, HARMFUL, HARMLESS, settings=_settings(mode="paper"), progress=False)
    b = calibrate(tiny_host, HARMFUL, HARMLESS, settings=_settings(mode="paper"), progress=False,
                  guard_settings=GuardSettings(system_prompt="Be safe."))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint_parts["system_prompt"] != b.fingerprint_parts["system_prompt"]
    assert not torch.equal(a.centroids.harmful, b.centroids.harmful)
