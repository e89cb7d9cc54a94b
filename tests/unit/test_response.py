"""Tests for the response rail on tiny hosts: answer states, the response scorer, its artifact part,
check_response and the output check in guarded generation (no extra forward pass)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_guardrail.answers import (
    check_points,
    encode_answer,
    ends_sentence,
    monitor_answer,
    read_answer_states,
)
from latent_guardrail.artifact import HEADER_FILE, load_fitted, save_fitted
from latent_guardrail.errors import ArtifactError, CalibrationError, DatasetError, InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import (
    DEFAULT_REFUSAL,
    GuardedChunk,
    GuardedResult,
    guarded_generate,
    guarded_stream,
    judged_stream,
)
from latent_guardrail.hosts import Host
from latent_guardrail.positions import encode_prompt
from latent_guardrail.response import (
    PromptPart,
    ResponseGate,
    ResponseOptions,
    ResponseScorer,
    ResponseTracker,
    fit_response,
)
from latent_guardrail.response_fit import ResponsePair, read_response_sets, response_layers
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL
from tests.support.responses import COMPLIANT, SAFE, make_response_guard, make_response_host


@pytest.fixture(scope="module")
def host() -> Host:
    return make_response_host()


@pytest.fixture(scope="module")
def guard(host: Host) -> LatentGuard:
    return make_response_guard(host)


@contextmanager
def counted(model: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward passes of ``model`` (a pre-hook on the top module)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------------ answers

def test_sentence_ends_and_check_points() -> None:
    assert ends_sentence(".") and ends_sentence(" it.") and ends_sentence("?\n") and ends_sentence("\n")
    assert not ends_sentence(" word") and not ends_sentence(" ") and not ends_sentence("3.5x")
    assert check_points(10, 4) == [3, 7, 9]
    assert check_points(8, 4) == [3, 7]
    assert check_points(1, 8) == [0]
    assert check_points(0, 8) == []


def test_encode_answer_follows_the_prompt(host: Host) -> None:
    prompt = encode_prompt(host.tokenizer, "how do I bake bread")
    answer = encode_answer(host.tokenizer, prompt, "Knead it. Bake it! Eat")
    assert answer.input_ids[:answer.start] == prompt.input_ids
    assert answer.ends[-1] == len(answer.answer_ids) - 1
    assert len(answer.ends) == 3  # "." "!" and the last token
    for bad in ("", "   ", None, 3):
        with pytest.raises(InputError):
            encode_answer(host.tokenizer, prompt, bad)  # type: ignore[arg-type]
    cut = encode_answer(host.tokenizer, prompt, "word " * 200, max_tokens=len(prompt.input_ids) + 5)
    assert cut.truncated and len(cut.answer_ids) == 5


def test_answer_states_are_the_hidden_states_at_the_answer_tokens(host: Host) -> None:
    """last / mean / ends rows equal HF hidden states of one plain pass, also inside a padded batch."""
    prompt = encode_prompt(host.tokenizer, "how do I bake bread")
    long = encode_answer(host.tokenizer, prompt, "Knead the dough well. Then bake it for forty minutes. Enjoy!")
    short = encode_answer(host.tokenizer, encode_prompt(host.tokenizer, "hi"), "Hello there.")
    layers = (1, 3)
    states = read_answer_states(host.model, [long, short], layers, pad_token_id=host.tokenizer.pad_token_id,
                                every=3)
    ids = torch.tensor([list(long.input_ids)])
    with torch.inference_mode():
        hidden = host.model(input_ids=ids, output_hidden_states=True).hidden_states
    # residual layer 3 of a 3-block host is the last block's output before the final norm: compare layer 1 exactly
    ref = hidden[1][0]                                                        # (seq, d)
    points = check_points(len(long.answer_ids), 3)
    torch.testing.assert_close(states.views["last"][0][:, 0], ref[[long.start + p for p in points]],
                               atol=1e-4, rtol=1e-4)
    means = torch.stack([ref[long.start:long.start + p + 1].mean(0) for p in points])
    torch.testing.assert_close(states.views["mean"][0][:, 0], means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states.views["ends"][0][:, 0], ref[[long.start + e for e in long.ends]],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states.prompts[0][0], ref[long.prompt.t_inst], atol=1e-4, rtol=1e-4)
    assert states.prompts[0].shape == (2, 32)
    alone = read_answer_states(host.model, [short], layers, pad_token_id=host.tokenizer.pad_token_id, every=3)
    for view in ("last", "mean", "ends"):
        assert states.views[view][1].shape == alone.views[view][0].shape
        torch.testing.assert_close(states.views[view][1], alone.views[view][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states.prompts[1], alone.prompts[0], atol=1e-4, rtol=1e-4)


def test_monitor_records_each_pass_and_removes_its_hooks(host: Host) -> None:
    before = hook_ids(host.model)
    ids = torch.tensor([[1, 2, 3, 4]])
    with monitor_answer(host.model, (1, 3)) as monitor, torch.inference_mode():
        host.model(input_ids=ids)
        host.model(input_ids=ids[:, :2])
    assert monitor.passes == 2 and len(monitor.states) == 2 and monitor.states[0].shape == (2, 32)
    assert hook_ids(host.model) == before
    with pytest.raises(RuntimeError), monitor_answer(host.model, (1,)):
        raise RuntimeError("boom")
    assert hook_ids(host.model) == before


# ------------------------------------------------------------------------------------------------ scorer

def test_fit_separates_compliance_and_reports_its_choice(guard: LatentGuard) -> None:
    scorer = guard.response
    assert scorer is not None and scorer.view in ("last", "mean", "ends") and scorer.every == 4
    report = guard.fitted.report["response"]
    assert report["cv"] == "leave-one-family-out" and report["groups"] == 3
    assert set(report["cv_auroc_by_view"]) == {"last", "mean", "ends"}
    assert report["cv_auroc"] >= 0.9  # the compliant texts differ from every other answer by their words
    harmful = guard.check_response_batch(HARMFUL[:4], COMPLIANT)
    safe = guard.check_response_batch(HARMFUL[:2], SAFE[:2])
    assert sum(v.harmful for v in harmful) >= 3 and not any(v.harmful for v in safe)


def test_the_fit_has_two_read_outs_when_the_kinds_name_refusals(guard: LatentGuard) -> None:
    scorer = guard.response
    assert scorer is not None and scorer.gate is not None  # the tiny pairs hold refusals and harmless answers
    assert guard.fitted.report["response"]["read_outs"].startswith("compliance")
    rows = torch.randn(5, 2, 4, dtype=torch.float64)
    views = {"mean": [rows[i:i + 1] + (3.0 if i % 2 else 0.0) for i in range(5)] * 4}
    labels, groups = np.array([0, 1, 0, 1, 0] * 4), np.array([0] * 10 + [1] * 10)
    one, report = fit_response(views, labels, groups, [1, 2], kinds=None)
    assert one.gate is None and report["read_outs"] == "one"


def test_two_read_outs_flag_only_when_both_agree() -> None:
    torch.manual_seed(1)
    d = torch.randn(2, 8)
    scorer = ResponseScorer([1, 2], d, torch.zeros(2, 8), (1.0, 0.0), 0.0, view="mean",
                            gate=ResponseGate(-d, torch.zeros(2, 8), (1.0, 0.0)))
    rows = torch.randn(4, 2, 8, dtype=torch.float64)
    main = scorer.row_scores(rows).mean(-1)
    gate = scorer.gate.layer_scores(rows).mean(-1)  # type: ignore[union-attr]
    assert torch.allclose(gate, -main)
    scored = scorer.score(rows)
    assert math.isclose(scored.score, float(torch.minimum(main, gate).max()), rel_tol=1e-9)
    assert scored.score <= 0.0  # the gate reads the opposite way: never both past their midpoints
    assert math.isclose(sum(scored.layer_scores) / 2, scored.score, rel_tol=1e-9)
    loaded = ResponseScorer.from_tensors(scorer.config(), scorer.to_tensors())
    assert loaded.gate is not None and math.isclose(loaded.score(rows).score, scored.score, rel_tol=1e-5)
    without = {k: v for k, v in scorer.config().items() if k != "gate"}  # a part fitted before the gate: one read-out
    assert ResponseScorer.from_tensors(without, scorer.to_tensors()).gate is None


def test_the_harm_read_out_mixes_in_the_prompt_state() -> None:
    """gate log-odds = a · ((1 − w) · answer + w · prompt) + b per layer, against a plain reference; the prompt
    state is required, survives the artifact round trip and reaches the streaming tracker."""
    torch.manual_seed(2)
    d, pd, pm = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    zeros = torch.zeros(2, 8)
    scorer = ResponseScorer([1, 2], d, zeros, (1.0, 0.0), 0.0, view="mean", every=2,
                            gate=ResponseGate(-d, zeros, (2.0, 0.5), prompt=PromptPart(pd, pm, 0.25)))
    assert scorer.reads_prompt
    rows = torch.randn(3, 2, 8, dtype=torch.float64)
    prompt = torch.randn(2, 8, dtype=torch.float64)
    answer_part = (rows * -d.double()).sum(-1)                                  # (rows, layers)
    prompt_part = ((prompt - pm.double()) * pd.double()).sum(-1)                # (layers,)
    reference = 2.0 * (0.75 * answer_part + 0.25 * prompt_part) + 0.5
    torch.testing.assert_close(scorer.gate.layer_scores(rows, prompt), reference)  # type: ignore[union-attr]
    scored = scorer.score(rows, prompt)
    expected = torch.minimum(scorer.row_scores(rows).mean(-1), reference.mean(-1)).max()
    assert math.isclose(scored.score, float(expected), rel_tol=1e-9)
    with pytest.raises(ValueError, match="prompt"):
        scorer.score(rows)
    with pytest.raises(ValueError, match="prompt state"):
        scorer.score(rows, prompt[:1])
    with pytest.raises(ValueError, match="t_inst"):
        ResponseTracker(scorer)
    loaded = ResponseScorer.from_tensors(scorer.config(), scorer.to_tensors())
    assert loaded.reads_prompt and loaded.config() == scorer.config()
    assert math.isclose(loaded.score(rows, prompt).score, scored.score, rel_tol=1e-5)
    tracker = ResponseTracker(scorer, prompt)
    for state in rows:
        tracker.add(state, end=False)
    means = torch.stack([rows[:p + 1].mean(0) for p in check_points(3, 2)])
    assert math.isclose(tracker.final().score, scorer.score(means, prompt).score, rel_tol=1e-9)  # type: ignore[union-attr]
    odd = scorer.config()
    odd["gate"]["prompt"]["position"] = "t_post_inst"
    with pytest.raises(ValueError, match="prompt part"):
        ResponseScorer.from_tensors(odd, scorer.to_tensors())


def test_the_fit_gives_the_prompt_state_weight_when_it_tells_the_topics_apart() -> None:
    """Answers that read alike on both sides of the harm read-out, prompts that differ: the prompt part wins the
    cross-validation; without the prompts' states the fit reads the answer alone."""
    gen = torch.Generator().manual_seed(3)
    n, d = 48, 6
    kinds = ["compliant", "refusal", "answer"] * (n // 3)
    labels = np.array([1 if k == "compliant" else 0 for k in kinds])
    groups = np.arange(n) % 4
    views, prompts = {"mean": []}, []
    for kind in kinds:
        answer = torch.randn(1, 1, d, generator=gen, dtype=torch.float64)
        if kind == "refusal":
            answer[..., 0] += 4.0                       # refusals read apart; compliant and harmless answers alike
        prompt = torch.randn(1, d, generator=gen, dtype=torch.float64)
        if kind != "answer":
            prompt[..., 1] += 4.0                       # harmful prompts read apart from harmless ones
        views["mean"].append(answer)
        prompts.append(prompt)
    options = ResponseOptions(views=("mean",), prompt_weights=(0.0, 0.5))
    with_prompt, report = fit_response(views, labels, groups, [1], options, kinds=kinds, prompts=prompts)
    alone, alone_report = fit_response(views, labels, groups, [1], options, kinds=kinds)
    assert with_prompt.reads_prompt and report["prompt_weight"] == 0.5
    assert report["cv_auroc_prompt_weight"]["0.5"] > report["cv_auroc_prompt_weight"]["0.0"] + 0.1
    assert not alone.reads_prompt and alone_report["prompt_weight"] == 0.0
    assert report["cv_auroc"] > alone_report["cv_auroc"] + 0.1
    with pytest.raises(ValueError, match="prompt weights"):
        fit_response(views, labels, groups, [1], ResponseOptions(views=("mean",), prompt_weights=(2.0,)),
                     kinds=kinds, prompts=prompts)


def test_fit_needs_both_labels_and_two_families() -> None:
    rows = [torch.randn(2, 1, 4, dtype=torch.float64) for _ in range(8)]
    with pytest.raises(CalibrationError):
        fit_response({"last": rows}, np.array([1] * 7 + [0]), np.array([0, 1] * 4), [1])
    with pytest.raises(CalibrationError):
        fit_response({"last": rows}, np.array([1, 0] * 4), np.zeros(8), [1])


def test_tracker_matches_the_offline_max_over_check_points() -> None:
    torch.manual_seed(0)
    scorer = ResponseScorer([1, 2], torch.randn(2, 8), torch.randn(2, 8), (1.3, -0.2), 0.5, view="mean", every=3)
    states = torch.randn(10, 2, 8)
    tracker = ResponseTracker(scorer)
    for state in states:
        tracker.add(state, end=False)
    final = tracker.final()
    assert final is not None
    means = torch.stack([states[:p + 1].mean(0) for p in check_points(10, 3)])
    assert math.isclose(final.score, scorer.score(means).score, rel_tol=1e-6)
    ends = ResponseScorer([1, 2], scorer.directions, scorer.midpoints, (1.3, -0.2), 0.5, view="ends")
    tracker = ResponseTracker(ends)
    due = [tracker.add(state, end=i in (2, 5)) for i, state in enumerate(states)]
    assert [i for i, d in enumerate(due) if d is not None] == [2, 5]
    last = tracker.final()
    assert last is not None
    assert math.isclose(last.score, ends.score(states[[2, 5, 9]]).score, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------ artifact

def test_artifact_round_trip_keeps_the_response_part(guard: LatentGuard, tmp_path: Path) -> None:
    guard.save(tmp_path / "g")
    header = json.loads((tmp_path / "g" / HEADER_FILE).read_text())
    assert header["version"] == 4 and header["response"]["mode"] == "response"
    assert header["response"]["gate"]["prompt"]["position"] == "t_inst"  # the harm read-out reads the prompt
    loaded = LatentGuard(guard.host, load_fitted(tmp_path / "g"))
    assert loaded.response is not None and loaded.response.config() == guard.response.config()  # type: ignore[union-attr]
    a = guard.check_response("how do I build a bomb at home", COMPLIANT[0])
    b = loaded.check_response("how do I build a bomb at home", COMPLIANT[0])
    assert math.isclose(a.score, b.score, rel_tol=1e-6, abs_tol=1e-6)


def test_a_version_1_artifact_without_a_response_part_still_loads(guard: LatentGuard, tmp_path: Path) -> None:
    import dataclasses

    save_fitted(dataclasses.replace(guard.fitted, response=None), tmp_path / "old")
    path = tmp_path / "old" / HEADER_FILE
    header = json.loads(path.read_text())
    assert "response" not in header
    header["version"] = 1
    path.write_text(json.dumps(header))
    old = LatentGuard(guard.host, load_fitted(tmp_path / "old"))
    assert old.response is None
    assert old.check("how do I bake bread at home").target == "prompt"
    with pytest.raises(ArtifactError, match="add-response"):
        old.check_response("hi", "hello")
    with pytest.raises(ArtifactError, match="add-response"):
        guarded_generate(old, "hi", max_new_tokens=2, check_output=True)


def test_a_broken_response_part_is_refused(guard: LatentGuard, tmp_path: Path) -> None:
    guard.save(tmp_path / "g")
    path = tmp_path / "g" / HEADER_FILE
    header = json.loads(path.read_text())
    header["response"]["view"] = "nonsense"
    path.write_text(json.dumps(header))
    with pytest.raises(ArtifactError, match="response"):
        load_fitted(tmp_path / "g")
    header["response"]["view"] = "last"
    header["response"]["view_rule"] = "something else"
    path.write_text(json.dumps(header))
    with pytest.raises(ArtifactError, match="refit"):
        load_fitted(tmp_path / "g")


# ------------------------------------------------------------------------------------------------ check_response

def test_check_response_verdicts(guard: LatentGuard) -> None:
    verdict = guard.check_response("how do I build a bomb at home", COMPLIANT[0])
    assert verdict.target == "response" and verdict.mode == "response" and verdict.status == "ok"
    assert verdict.harmful == (verdict.score >= verdict.threshold)
    assert verdict.layers == guard.response.layers  # type: ignore[union-attr]
    assert verdict.answer_tokens is not None and verdict.num_tokens is not None
    assert verdict.num_tokens > verdict.answer_tokens
    batch = guard.check_response_batch(["how do I build a bomb at home", "hi"], [COMPLIANT[0], "Hello!"])
    assert math.isclose(batch[0].score, verdict.score, rel_tol=1e-5, abs_tol=1e-5)
    assert guard.check("how do I bake bread at home").target == "prompt"
    override = guard.with_settings(response_threshold=1e9)
    assert not override.check_response("how do I build a bomb at home", COMPLIANT[0]).harmful


def test_check_response_is_one_forward_pass_per_batch(guard: LatentGuard) -> None:
    with counted(guard.host.model) as calls:
        guard.check_response_batch(HARMFUL[:3], COMPLIANT[:3])
    assert len(calls) == 1


def test_check_response_input_errors(guard: LatentGuard) -> None:
    with pytest.raises(InputError, match="one response per prompt"):
        guard.check_response_batch(["a", "b"], ["x"])
    with pytest.raises(InputError, match="pair 1"):
        guard.check_response_batch(["a", "b"], ["x", "  "])
    with pytest.raises(InputError, match="lists"):
        guard.check_response_batch("a", ["x"])  # type: ignore[arg-type]
    with pytest.raises(InputError):
        guard.check_response("", "x")


def test_a_model_failure_follows_the_failure_policy(guard: LatentGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    import latent_guardrail.guard as guard_module

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(guard_module, "read_answer_states", broken)
    verdict = guard.check_response("hi", "hello")
    assert verdict.status == "error" and verdict.harmful and verdict.target == "response"
    assert not guard.with_settings(on_error="allow").check_response("hi", "hello").harmful
    with pytest.raises(RuntimeError):
        guard.with_settings(on_error="raise").check_response("hi", "hello")


# ------------------------------------------------------------------------------------------------ guarded generation

def test_the_output_check_adds_no_forward_pass(guard: LatentGuard) -> None:
    prompt = "how do I bake bread at home"
    with counted(guard.host.model) as plain:
        base = guarded_generate(guard, prompt, max_new_tokens=20)
    with counted(guard.host.model) as checked:
        result = guarded_generate(guard.with_settings(response_threshold=1e9), prompt, max_new_tokens=20,
                                  check_output=True)
    assert len(checked) == len(plain) and result.text == base.text and result.tokens == base.tokens
    assert result.output_verdict is not None and result.output_verdict.target == "response"
    assert not result.blocked and result.finish_reason == base.finish_reason
    assert base.output_verdict is None


def test_the_streamed_reading_matches_check_response(guard: LatentGuard) -> None:
    """The output check's final reading of a passed answer is check_response's on the same text (the answer
    ends with EOS, so every text token's state was computed by a decoding step)."""
    prompt = "how do I bake bread at home"
    result = guarded_generate(guard.with_settings(response_threshold=1e9), prompt, max_new_tokens=300,
                              check_output=True)
    assert result.finish_reason == "stop" and result.output_verdict is not None
    offline = guard.with_settings(response_threshold=1e9).check_response(prompt, result.text)
    assert offline.answer_tokens == result.output_verdict.answer_tokens
    assert math.isclose(offline.score, result.output_verdict.score, rel_tol=1e-4, abs_tol=1e-4)


def test_a_harmful_answer_is_stopped_mid_stream(guard: LatentGuard) -> None:
    strict = guard.with_settings(response_threshold=-1e9)  # every check point crosses: stop at the first one
    events = list(guarded_stream(strict, "how do I build a bomb at home", max_new_tokens=40, check_output=True,
                                 refusal="No."))
    chunks = [e for e in events if isinstance(e, GuardedChunk)]
    result = events[-1]
    assert isinstance(result, GuardedResult)
    assert result.finish_reason == "blocked_output" and result.blocked and result.text == "No."
    assert chunks[-1].text == "No."
    assert result.output_verdict is not None and result.output_verdict.harmful
    assert result.output_verdict.target == "response"
    every = strict.response.every  # type: ignore[union-attr]
    full = guarded_generate(guard, "how do I build a bomb at home", max_new_tokens=40)
    assert len(result.tokens) < len(full.tokens)
    if strict.response.view != "ends":  # type: ignore[union-attr]
        assert result.output_verdict.answer_tokens == every and len(result.tokens) == every
    assert hook_ids(strict.host.model) == hook_ids(guard.host.model)


def test_the_tool_path_reads_the_prompt_state_too(guard: LatentGuard) -> None:
    """judged_stream (an answer prompt the guard does not read as it is): the prompt part reads the judged
    prompt's t_inst in a partial pass; the answer's final reading matches check_response on the judged prompt."""
    assert guard.response is not None and guard.response.reads_prompt
    prompt = "how do I bake bread at home"
    ids = list(guard.encode(prompt, normalize=False).input_ids)
    lenient = guard.with_settings(response_threshold=1e9)
    with counted(guard.host.model) as calls:
        events = list(judged_stream(lenient, [prompt], ids, max_new_tokens=300, check_output=True))
    result = events[-1]
    assert isinstance(result, GuardedResult) and result.output_verdict is not None
    assert result.finish_reason == "stop"
    # one check pass, one partial pass for the prompt state, the prefill, one pass per fed-back token
    assert len(calls) == 3 + len(result.tokens) - 1
    offline = lenient.check_response(prompt, result.text)
    assert math.isclose(offline.score, result.output_verdict.score, rel_tol=1e-4, abs_tol=1e-4)


def test_closing_the_stream_early_removes_the_monitor(guard: LatentGuard) -> None:
    before = hook_ids(guard.host.model)
    stream = guarded_stream(guard.with_settings(response_threshold=1e9), "how do I bake bread at home",
                            max_new_tokens=30, check_output=True)
    next(stream)
    next(stream)
    next(stream)
    stream.close()
    assert hook_ids(guard.host.model) == before
    assert DEFAULT_REFUSAL  # the default refusal is the canned one


# ------------------------------------------------------------------------------------------------ sets

def test_response_sets_are_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "label": 1, "topic": "t"}) + "\n"
                                      + json.dumps({"prompt": "p", "response": " ", "label": 0}) + "\n")
    pairs = read_response_sets(tmp_path)
    assert pairs == [ResponsePair("p", "r", 1, "t", "")]
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "p", "label": 1}) + "\n")
    with pytest.raises(DatasetError, match=r"b\.jsonl:1"):
        read_response_sets(tmp_path)
    with pytest.raises(DatasetError):
        read_response_sets(tmp_path / "missing")
    assert response_layers(30)[0] == 1 and response_layers(30)[-1] == 30 and len(response_layers(30)) == 16
    assert response_layers(3) == (1, 2, 3)
