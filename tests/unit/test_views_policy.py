"""Views (the registry and the capture layout), the decision policy and the scorer registry."""

from __future__ import annotations

import logging

import pytest
import torch

from latent_guardrail.centroids import Centroids, PaperScorer, TunedScorer
from latent_guardrail.errors import NumericalError
from latent_guardrail.policy import Scores, ThresholdPolicy, failure_verdict
from latent_guardrail.positions import PaddedBatch
from latent_guardrail.scorers import SCORERS, scorer_class, scorer_from_artifact, scorer_tensors
from latent_guardrail.verdict import Verdict
from latent_guardrail.views import VIEWS, ViewLayout, get_view, resolve_views, select_views


def _batch() -> PaddedBatch:
    ids = torch.arange(12).view(2, 6)
    return PaddedBatch(ids, torch.ones_like(ids), t_inst=torch.tensor([3, 4]), t_post_inst=torch.tensor([5, 5]),
                       t_content_start=torch.tensor([1, 2]))


def test_the_registry_knows_the_views_and_their_kinds() -> None:
    assert {name: view.kind for name, view in VIEWS.items()} == {
        "t_inst": "point", "t_post_inst": "point", "content_mean": "span", "clause_ends": "set"}
    assert VIEWS["clause_ends"].width == 32 and VIEWS["t_inst"].width == 1
    assert get_view("t_inst") is VIEWS["t_inst"]
    assert get_view(VIEWS["content_mean"]) is VIEWS["content_mean"]


@pytest.mark.parametrize("bad", [["middle"], [], ["t_inst", "t_inst"], "t_inst"])
def test_unknown_repeated_or_missing_views_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        resolve_views(bad)  # type: ignore[arg-type]


def test_layout_captures_points_first_then_spans_and_maps_back_in_the_asked_order() -> None:
    layout = ViewLayout.of(["content_mean", "t_post_inst", "t_inst"])
    assert [v.name for v in layout.points] == ["t_post_inst", "t_inst"]
    assert [v.name for v in layout.spans] == ["content_mean"]
    assert layout.order == (2, 0, 1)
    positions, spans = layout.locate(_batch())
    assert positions.tolist() == [[5, 3], [5, 4]]
    assert spans is not None and spans.tolist() == [[[1, 3]], [[2, 4]]]


def test_a_span_only_layout_still_captures_t_inst() -> None:
    layout = ViewLayout.of(["content_mean"])
    assert [v.name for v in layout.points] == ["t_inst"]
    assert layout.order == (1,)


def test_select_views_takes_slices_by_name() -> None:
    states = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    picked = select_views(states, ["t_inst", "content_mean", "t_post_inst"], ["t_post_inst", "t_inst"])
    assert torch.equal(picked, states[:, [2, 0]])
    with pytest.raises(ValueError, match="not read"):
        select_views(states[:, :2], ["t_inst", "content_mean"], ["t_post_inst"])
    with pytest.raises(ValueError, match="do not hold"):
        select_views(states, ["t_inst", "content_mean"], ["t_inst"])


@pytest.mark.parametrize(("score", "harmful"), [(0.5, True), (0.4999, False), (2.0, True)])
def test_the_threshold_policy_blocks_at_the_threshold_and_names_the_top_category(score: float,
                                                                               harmful: bool) -> None:
    decision = ThresholdPolicy().decide(Scores(score, 0.5, {"fraud": 0.1, "weapons": 0.9}))
    assert decision.harmful is harmful
    assert decision.decided_by == "threshold"
    assert decision.category == ("weapons" if harmful else None)


def test_a_verdict_decided_by_the_threshold_must_agree_with_it() -> None:
    with pytest.raises(ValueError):
        Verdict(harmful=True, score=0.0, threshold=1.0, mode="tuned", decided_by="threshold")
    with pytest.raises(ValueError):
        Verdict(harmful=True, score=2.0, threshold=1.0, mode="tuned", decided_by="failure")
    other = Verdict(harmful=True, score=0.0, threshold=1.0, mode="tuned", decided_by="category:weapons")
    assert other.harmful and other.decided_by == "category:weapons"


@pytest.mark.parametrize(("on_error", "harmful"), [("block", True), ("allow", False)])
def test_failure_verdicts_come_from_one_builder_that_logs(on_error: str, harmful: bool,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="latent_guardrail")
    verdict = failure_verdict(NumericalError("nan"), on_error, mode="tuned", threshold=float("nan"),  # type: ignore[arg-type]
                              fingerprint="abc")
    assert verdict.harmful is harmful and verdict.status == "error" and verdict.decided_by == "failure"
    assert verdict.error == "non_finite_states" and verdict.threshold == 0.0
    assert [getattr(r, "reason", None) for r in caplog.records] == ["non_finite_states"]
    with pytest.raises(KeyError):
        failure_verdict(KeyError("x"), "raise", mode="tuned", threshold=0.0, fingerprint="")


def _centroids(d: int = 4) -> Centroids:
    g = torch.Generator().manual_seed(0)
    return Centroids((0, 1), torch.randn(2, d, generator=g, dtype=torch.float64),
                     torch.randn(2, d, generator=g, dtype=torch.float64), {})


def test_scorers_are_found_by_mode_and_rebuilt_from_their_own_tensors() -> None:
    assert set(SCORERS) == {"paper", "tuned", "pooled"}
    assert scorer_class("tuned") is TunedScorer
    with pytest.raises(ValueError, match="magic"):
        scorer_class("magic")
    g = torch.Generator().manual_seed(1)
    tuned = TunedScorer([0, 1], torch.randn(1, 2, 4, generator=g), torch.randn(1, 2, 4, generator=g),
                        (1.5, -0.2), 0.3)
    tensors = {**tuned.to_tensors(), "centroids.harmful": torch.zeros(2, 4), "paper.x": torch.zeros(1)}
    own = scorer_tensors("tuned", tensors)
    assert set(own) == set(tuned.to_tensors())
    again = scorer_from_artifact(tuned.config(), own, _centroids())
    states = torch.randn(3, 1, 2, 4, generator=g)
    assert torch.equal(again.score(states).score, tuned.score(states).score)
    paper = scorer_from_artifact(PaperScorer(_centroids(), 0.1).config(), {}, _centroids())
    assert isinstance(paper, PaperScorer) and paper.threshold == 0.1


def test_validate_names_the_tensor_whose_shape_does_not_fit() -> None:
    tuned = TunedScorer([0, 1], torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), (1.0, 0.0), 0.0)
    tuned.validate(4)
    with pytest.raises(ValueError, match=r"tuned\.directions"):
        tuned.validate(5)
    with pytest.raises(ValueError, match="finite"):
        TunedScorer([0, 1], torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), (float("inf"), 0.0), 0.0).validate(4)
