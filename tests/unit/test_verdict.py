"""Tests for latent_guardrail.verdict: the Verdict invariants, constructors and summary."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from latent_guardrail.verdict import Verdict


def _ok(score: float, threshold: float = 0.0, **extra: object) -> Verdict:
    return Verdict(harmful=score >= threshold, score=score, threshold=threshold, mode="paper", **extra)


@pytest.mark.parametrize(("score", "threshold"), [(0.5, 0.1), (0.1, 0.5), (0.3, 0.3), (-2.0, -2.5)])
def test_ok_verdict_harmful_is_score_at_or_above_threshold(score: float, threshold: float) -> None:
    verdict = _ok(score, threshold)
    assert verdict.harmful is (score >= threshold)
    assert verdict.status == "ok"
    assert verdict.margin == pytest.approx(score - threshold)
    with pytest.raises(ValidationError, match="harmful == "):
        Verdict(harmful=not verdict.harmful, score=score, threshold=threshold, mode="paper")


def test_score_equal_to_threshold_is_harmful() -> None:
    assert _ok(0.25, 0.25).harmful is True
    with pytest.raises(ValidationError):
        Verdict(harmful=False, score=0.25, threshold=0.25, mode="tuned")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_ok_verdict_needs_finite_score_and_threshold(bad: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        Verdict(harmful=True, score=bad, threshold=0.0, mode="paper")
    with pytest.raises(ValidationError, match="finite"):
        Verdict(harmful=False, score=0.0, threshold=bad, mode="paper")


def test_ok_verdict_carries_no_error() -> None:
    with pytest.raises(ValidationError, match="no error"):
        Verdict(harmful=False, score=-1.0, threshold=0.0, mode="paper", error="oops")


def test_error_verdict_needs_a_reason() -> None:
    with pytest.raises(ValidationError, match="reason"):
        Verdict(harmful=True, score=0.0, threshold=0.0, mode="paper", status="error")
    verdict = Verdict(harmful=True, score=0.0, threshold=0.0, mode="paper", status="error", error="boom")
    assert verdict.error == "boom"


def test_unknown_status_and_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Verdict(harmful=False, score=-1.0, threshold=0.0, mode="paper", status="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Verdict(harmful=False, score=-1.0, threshold=0.0, mode="paper", colour="green")  # type: ignore[call-arg]


def test_verdict_is_frozen() -> None:
    verdict = _ok(1.0)
    with pytest.raises(ValidationError):
        verdict.harmful = False  # type: ignore[misc]
    with pytest.raises(ValidationError):
        verdict.score = -5.0  # type: ignore[misc]
    assert verdict.harmful is True and verdict.score == 1.0


@pytest.mark.parametrize("block", [True, False])
def test_from_failure_blocks_or_allows(block: bool) -> None:
    verdict = Verdict.from_failure("non_finite_states", block=block, mode="tuned", threshold=1.5, fingerprint="abc")
    assert verdict.status == "error"
    assert verdict.error == "non_finite_states"
    assert verdict.harmful is block
    assert verdict.threshold == 1.5
    assert verdict.fingerprint == "abc"
    assert verdict.mode == "tuned"
    assert not math.isnan(verdict.score)
    # the score sits on the side of the decision, so `margin` never contradicts `harmful`
    assert (verdict.margin > 0) is block


def test_error_verdict_survives_a_json_round_trip() -> None:
    """Adapters and the CLI ship verdicts as JSON; a failure verdict must come back as the same verdict."""
    for verdict in (Verdict.from_failure("non_finite_states", block=True, mode="paper"),
                    Verdict.from_failure("internal_error:RuntimeError", block=False, mode="tuned")):
        again = Verdict.model_validate_json(verdict.model_dump_json())
        assert again == verdict


def test_ok_verdict_survives_a_json_round_trip() -> None:
    verdict = _ok(0.75, 0.5, category="weapons", category_scores={"weapons": 0.9, "cyber": 0.1},
                  layer_scores={2: 0.7, 3: 0.8}, layers=(2, 3), t_inst=5, t_post_inst=9, num_tokens=10,
                  fingerprint="f00")
    again = Verdict.model_validate_json(verdict.model_dump_json())
    assert again == verdict
    assert again.layer_scores == {2: 0.7, 3: 0.8}


def test_summary_of_ok_verdicts() -> None:
    harmful = _ok(0.75, 0.5, category="weapons")
    line = harmful.summary()
    assert line.startswith("HARMFUL")
    assert "score=+0.7500" in line and "threshold=+0.5000" in line
    assert "mode=paper" in line and "category=weapons" in line
    harmless = _ok(-0.25, 0.5)
    line = harmless.summary()
    assert line.startswith("harmless")
    assert "score=-0.2500" in line
    assert "category" not in line
    assert "\n" not in line


def test_summary_of_failure_verdicts() -> None:
    assert Verdict.from_failure("non_finite_states", block=True, mode="paper").summary() == (
        "BLOCK (failure policy: non_finite_states)")
    assert Verdict.from_failure("internal_error:X", block=False, mode="paper").summary() == (
        "ALLOW (failure policy: internal_error:X)")
