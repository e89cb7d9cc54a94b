"""Every combination of block / allow / monitor / unnamed, own thresholds and overall score, against the rule as
the README states it (a reference written here from the words, not from policy.py)."""

from __future__ import annotations

import itertools

import pytest

from latent_guardrail.policy import CategoryPolicy, Scores, ThresholdPolicy

T = 0.0
NAMES = ("a", "b")
ACTIONS = ("block", "allow", "monitor", None)          # None: not named (blocks)


def reference(score: float, cats: dict[str, float], actions: dict[str, str], own: dict[str, float]
              ) -> tuple[bool, str, str | None, tuple[str, ...]]:
    """README: a category applies when its score reaches its threshold (its own, else the overall one); one
    category decides, the one furthest above its threshold among the candidates — every category that applies
    when the overall score reaches the threshold, only those with a threshold of their own below it. No
    candidate: the overall score decides ("threshold", the top-scoring category named when blocked). A blocking
    decider blocks ("category:" at or above, "category_threshold:" below); an allowed or monitored one passes
    ("category_allow:" / "category_monitor:" at or above; "threshold" below). Monitored categories that apply are
    always listed."""
    def over(c: str) -> float:
        return cats[c] - own.get(c, T)

    applying = [c for c in cats if over(c) >= 0]
    monitored = tuple(sorted((c for c in applying if actions.get(c) == "monitor"), key=lambda c: -over(c)))
    pool = applying if score >= T else [c for c in applying if c in own]
    if not pool:
        blocked = score >= T
        return blocked, "threshold", (max(cats, key=lambda c: cats[c]) if blocked and cats else None), monitored
    decider = max(pool, key=over)
    act = actions.get(decider, "block")
    if act == "block":
        return True, ("category:" if score >= T else "category_threshold:") + decider, decider, monitored
    if score >= T:
        return False, f"category_{act}:{decider}", decider, monitored
    return False, "threshold", None, monitored


CASES = list(itertools.product(
    (-1.0, 0.0, 1.5),                                      # overall score below / at / above T
    ((2.0, 1.0), (1.0, -1.0), (-1.0, -2.0), (-0.5, 3.0)),  # category scores (a, b)
    itertools.product(ACTIONS, repeat=2),                  # action of a, of b
    (None, -0.8, 2.5),                                     # own threshold of a
    (None, 0.5),                                           # own threshold of b
))


@pytest.mark.parametrize(("score", "values", "acts", "own_a", "own_b"), CASES)
def test_every_combination_follows_the_documented_rule(score: float, values: tuple[float, float],
                                                       acts: tuple[str | None, str | None], own_a: float | None,
                                                       own_b: float | None) -> None:
    cats = dict(zip(NAMES, values, strict=True))
    actions = {n: a for n, a in zip(NAMES, acts, strict=True) if a is not None}
    own = {n: t for n, t in zip(NAMES, (own_a, own_b), strict=True) if t is not None}
    got = CategoryPolicy(actions, own).decide(Scores(score, T, cats))
    assert (got.harmful, got.decided_by, got.category, got.monitored) == reference(score, cats, actions, own)
    if not actions and not own:
        plain = ThresholdPolicy().decide(Scores(score, T, cats))
        assert (got.harmful, got.category) == (plain.harmful, plain.category)


@pytest.mark.parametrize("score", (-1.0, 0.0, 1.5))
def test_no_category_at_all(score: float) -> None:
    got = CategoryPolicy({}, {}).decide(Scores(score, T, {}))
    assert (got.harmful, got.decided_by, got.category, got.monitored) == (score >= T, "threshold", None, ())


def test_the_cases_cover_every_rule() -> None:
    rules = set()
    for score, values, acts, own_a, own_b in CASES:
        cats = dict(zip(NAMES, values, strict=True))
        actions = {n: a for n, a in zip(NAMES, acts, strict=True) if a is not None}
        own = {n: t for n, t in zip(NAMES, (own_a, own_b), strict=True) if t is not None}
        rules.add(CategoryPolicy(actions, own).decide(Scores(score, T, cats)).decided_by.split(":")[0])
    assert rules == {"threshold", "category", "category_allow", "category_monitor", "category_threshold"}
