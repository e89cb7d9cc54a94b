"""Per-category policy: block / allow / monitor and category thresholds, on scores and on a tiny host's guard."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from latent_guardrail.errors import InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.policy import CategoryPolicy, Scores, ThresholdPolicy
from latent_guardrail.settings import GuardSettings
from tests.support.models import HARMFUL, HARMLESS

T = 0.0
CATS = {"weapons": 1.0, "drugs": 0.5, "fraud": -2.0}      # weapons and drugs apply at T, fraud does not


def decide(score: float, cats: dict[str, float] = CATS, **policy: dict) -> tuple[bool, str, str | None, tuple]:  # type: ignore[type-arg]
    d = CategoryPolicy(**policy).decide(Scores(score, T, cats))
    return d.harmful, d.decided_by, d.category, d.monitored


@pytest.mark.parametrize("score", [-1.0, 0.0, 2.0])
@pytest.mark.parametrize("cats", [CATS, {}, {"fraud": -3.0}])
def test_no_actions_and_no_thresholds_decide_as_the_threshold_policy(score: float, cats: dict[str, float]) -> None:
    a = CategoryPolicy().decide(Scores(score, T, cats))
    b = ThresholdPolicy().decide(Scores(score, T, cats))
    assert (a.harmful, a.category) == (b.harmful, b.category)


@pytest.mark.parametrize(("actions", "expected"), [
    ({}, (True, "category:weapons", "weapons", ())),
    ({"weapons": "allow"}, (False, "category_allow:weapons", "weapons", ())),      # the top category decides
    ({"drugs": "allow"}, (True, "category:weapons", "weapons", ())),               # drugs is not the top one
    ({"weapons": "allow", "drugs": "allow"}, (False, "category_allow:weapons", "weapons", ())),
    ({"weapons": "monitor", "drugs": "allow"}, (False, "category_monitor:weapons", "weapons", ("weapons",))),
    ({"drugs": "monitor"}, (True, "category:weapons", "weapons", ("drugs",))),     # monitored, reported anyway
    ({"fraud": "allow"}, (True, "category:weapons", "weapons", ())),               # fraud does not apply
])
def test_overall_score_above_threshold(actions: dict[str, str], expected: tuple) -> None:  # type: ignore[type-arg]
    assert decide(2.0, actions=actions) == expected


def test_the_decider_is_the_category_furthest_above_its_own_threshold() -> None:
    # drugs 0.5 over its own -1.0 (margin 1.5) beats weapons 1.0 over the overall 0.0 (margin 1.0)
    assert decide(2.0, thresholds={"drugs": -1.0}) == (True, "category:drugs", "drugs", ())
    assert decide(2.0, thresholds={"drugs": -1.0}, actions={"drugs": "allow"}) == (
        False, "category_allow:drugs", "drugs", ())
    assert decide(2.0, thresholds={"drugs": -1.0}, actions={"weapons": "allow"}) == (
        True, "category:drugs", "drugs", ())
    # below the overall threshold only categories with a threshold of their own are candidates
    assert decide(-1.0, thresholds={"drugs": 0.0}, actions={"drugs": "allow"}) == (False, "threshold", None, ())


def test_no_category_applies_the_overall_score_decides() -> None:
    low = {"weapons": -1.0, "drugs": -2.0}
    assert decide(2.0, low, actions={"weapons": "allow"}) == (True, "threshold", "weapons", ())
    assert decide(-1.0, low, actions={"weapons": "allow"}) == (False, "threshold", None, ())


def test_a_category_threshold_of_its_own_blocks_below_the_overall_one() -> None:
    assert decide(-1.0, thresholds={"fraud": -2.5}) == (True, "category_threshold:fraud", "fraud", ())
    assert decide(-1.0, thresholds={"fraud": -1.5}) == (False, "threshold", None, ())   # fraud -2.0 < -1.5
    assert decide(-1.0, thresholds={"fraud": -2.5}, actions={"fraud": "monitor"}) == (
        False, "threshold", None, ("fraud",))
    assert decide(-1.0) == (False, "threshold", None, ())   # weapons applies at T, but without its own threshold
    assert decide(2.0, thresholds={"weapons": 5.0, "drugs": 5.0}) == (True, "threshold", "weapons", ())


def test_settings_reject_bad_actions_and_thresholds() -> None:
    with pytest.raises(ValueError):
        GuardSettings(category_policy={"weapons": "ignore"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        GuardSettings(category_thresholds={"weapons": float("nan")})


@pytest.fixture(scope="module")
def guard(tiny_host: Host) -> LatentGuard:
    half = len(HARMFUL) // 2
    return LatentGuard.calibrate(tiny_host, [], HARMLESS, mode="tuned", progress=False,
                                 categories={"weapons": HARMFUL[:half], "drugs": HARMFUL[half:]})


def test_the_guard_applies_the_policy_and_names_the_rule(guard: LatentGuard, caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    assert set(guard.categories) == {"weapons", "drugs"}
    base = guard.check_batch(HARMFUL[:6])
    flagged = [v for v in base if v.harmful and v.category]
    assert flagged
    top = flagged[0].category
    assert top is not None
    allowing = guard.with_settings(category_policy={c: "allow" for c in guard.categories})
    after_all = allowing.check_batch(HARMFUL[:6])
    for before, after in zip(base, after_all, strict=True):
        assert after.score == before.score
        if after.decided_by.startswith("category_allow:"):
            assert before.harmful and not after.harmful
        else:
            assert after.harmful == before.harmful
    assert any(b.harmful and not a.harmful for b, a in zip(base, after_all, strict=True))
    with caplog.at_level(logging.INFO, logger="latent_guardrail.guard"):
        monitoring = guard.with_settings(category_policy={c: "monitor" for c in guard.categories})
        verdicts = monitoring.check_batch(HARMFUL[:6])
    assert any(v.monitored for v in verdicts) and "monitored categories applied" in caplog.text
    assert all(not v.harmful or v.decided_by == "threshold" for v in verdicts)
    assert guard.with_settings(category_policy={}).check(HARMFUL[0]) == guard.check(HARMFUL[0])


def test_unknown_categories_are_named(guard: LatentGuard) -> None:
    with pytest.raises(InputError, match="unknown category in the category policy: legal_advice"):
        guard.with_settings(category_policy={"legal_advice": "block"})


def test_cli_takes_policy_pairs_and_rejects_bad_ones(guard: LatentGuard, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from latent_guardrail import cli

    folder = guard.save(tmp_path / "g")
    monkeypatch.setattr(cli, "load_host", lambda _model: guard.host)
    name = guard.categories[0]
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["check", "--guard", str(folder), "--json", "--policy", f"{name}=monitor",
                                 "--category-threshold", f"{name}=-100", HARMFUL[0]])
    assert ok.exit_code == 0, ok.output
    assert f'"monitored": ["{name}"]' in ok.output
    bad = runner.invoke(cli.app, ["check", "--guard", str(folder), "--policy", f"{name}", HARMFUL[0]])
    assert bad.exit_code != 0 and "--policy takes NAME=VALUE" in bad.output


def test_the_nemo_rail_takes_the_policy_from_custom_data(guard: LatentGuard) -> None:
    from latent_guardrail.integrations.nemo.loading import LatentGuardRailSettings
    from latent_guardrail.integrations.nemo.rail import LatentGuardRail, NemoConfigError

    settings = LatentGuardRailSettings.from_custom_data(
        {"latent_guard": {"guard": None, "mode": "check", "category_policy": {"weapons": "allow"},
                          "category_thresholds": {"drugs": -50.0}}})
    rail = LatentGuardRail(guard, settings)
    try:
        assert rail.guard.settings.category_policy == {"weapons": "allow"}
        assert rail.guard.settings.category_thresholds == {"drugs": -50.0}
        assert rail.guard.check(HARMLESS[0]).decided_by == "category_threshold:drugs"
    finally:
        rail.close()
    with pytest.raises(NemoConfigError, match="legal_advice"):
        LatentGuardRail(guard, LatentGuardRailSettings(guard=None, category_policy={"legal_advice": "block"}))
