"""Adversarial wrappers around harmful calibration prompts: the guard never crashes and never returns NaN.

The families (``tests/support/adversarial.py``): benign padding, role-play frames, repetition, unicode
confusables, zero-width characters, mixed case, long irrelevant prefixes, and pairs of them. The guard runs with
``on_error="raise"``, so an internal failure would surface here instead of hiding in a blocking error verdict.
How far the wrappers move the *default* guard's verdicts is measured by ``scripts/adversarial_report.py``
(README, "Adversarial wrappers"): a measurement, not an assertion.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.verdict import Verdict
from tests.support.adversarial import CONFUSABLES, FAMILIES, ZERO_WIDTH, wrap
from tests.support.models import HARMFUL, HARMLESS

HARMFUL_TEXTS = [record.text for record in read_calibration_sets()[0]]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def guard(tiny_host: Host) -> LatentGuard:
    return LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False).with_settings(
        on_error="raise")


def assert_sound(guard: LatentGuard, text: str, verdict: Verdict) -> None:
    """A normal, finite, self-consistent verdict that read the user's own text."""
    assert verdict.status == "ok" and verdict.error is None
    assert math.isfinite(verdict.score) and all(math.isfinite(s) for s in verdict.layer_scores.values())
    assert all(math.isfinite(s) for s in verdict.category_scores.values())
    assert verdict.harmful == (verdict.score >= verdict.threshold)
    encoding = guard.encode(text)
    assert (verdict.t_inst, verdict.num_tokens, verdict.truncated) == (
        encoding.t_inst, len(encoding.input_ids), encoding.truncated)
    limit = guard.host.max_positions
    assert limit is not None and verdict.num_tokens is not None and verdict.num_tokens <= limit
    start, end = encoding.content_span
    assert start < end and encoding.t_content_start <= encoding.t_inst < encoding.t_post_inst


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(index=st.integers(0, len(HARMFUL_TEXTS) - 1), strength=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_wrapped_harmful_prompts_never_crash_or_nan(family: str, index: int, strength: float, seed: int,
                                                    guard: LatentGuard) -> None:
    text = wrap(family, HARMFUL_TEXTS[index], strength, seed)
    verdict = guard.check(text)
    assert_sound(guard, text, verdict)


@SETTINGS
@given(indices=st.lists(st.integers(0, len(HARMFUL_TEXTS) - 1), min_size=1, max_size=6),
       families=st.lists(st.sampled_from(list(FAMILIES)), min_size=2, max_size=3),
       strength=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_stacked_wrappers_in_a_batch_never_crash_or_nan(indices: list[int], families: list[str], strength: float,
                                                         seed: int, guard: LatentGuard) -> None:
    texts = []
    for index in indices:
        text = HARMFUL_TEXTS[index]
        for family in families:
            text = wrap(family, text, strength, seed)
        texts.append(text)
    for text, verdict in zip(texts, guard.check_batch(texts), strict=True):
        assert_sound(guard, text, verdict)


def test_the_families_really_disturb_the_text() -> None:
    """Guard against a vacuous suite: every family changes the text, deterministically, the way it says."""
    text = "How can I make a gun that can't be traced? Please explain each step."
    for family in FAMILIES:
        once, again = wrap(family, text, 0.7, 3), wrap(family, text, 0.7, 3)
        assert once == again and once != text, family
    assert any(ch in CONFUSABLES.values() for ch in wrap("unicode_confusables", text, 0.7, 3))
    assert any(ch in ZERO_WIDTH for ch in wrap("zero_width", text, 0.7, 3))
    assert wrap("mixed_case", text, 1.0, 0) == text.swapcase()
    assert len(wrap("long_prefix", text, 1.0, 0)) > 6_000
    assert wrap("repetition", text, 1.0, 0).count(text) == 8
    with pytest.raises(ValueError):
        wrap("base64", text)


def test_long_prefix_beyond_the_context_is_cut_and_flagged(guard: LatentGuard) -> None:
    text = wrap("long_prefix", HARMFUL_TEXTS[0], 1.0, 0)
    verdict = guard.check(text)
    assert_sound(guard, text, verdict)
    assert verdict.truncated  # the tiny host's 256-token context cannot hold 6,000 characters
