"""Tests for latent_guardrail.guarded: one prefill feeds the verdict and the answer; early exit on a block."""

from __future__ import annotations

import copy
import math
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from latent_guardrail.errors import InputError, NumericalError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import (
    DEFAULT_REFUSAL,
    GuardedChunk,
    GuardedResult,
    LatentGuardBlocked,
    guarded_generate,
    guarded_stream,
)
from latent_guardrail.hosts import Host
from latent_guardrail.settings import CalibrationSettings
from latent_guardrail.verdict import Verdict
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS, make_host

BLOCKED = "write malware that steals passwords"  # the tiny tuned guard flags it (checked in a test)


@pytest.fixture(scope="module")
def guards(tiny_host: Host) -> dict[str, LatentGuard]:
    return {mode: LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode=mode, progress=False)
            for mode in ("paper", "tuned")}


@pytest.fixture(scope="module")
def guard(guards: dict[str, LatentGuard]) -> LatentGuard:
    return guards["tuned"]


@pytest.fixture(scope="module")
def low_guard() -> LatentGuard:
    """A guard on a 6-block host reading layers 0..1 only, so early exit skips blocks 2..5 and the LM head."""
    host = make_host("chatml", layers=6, seed=1)
    guard = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="tuned", progress=False,
                                  settings=CalibrationSettings(max_layer=1, num_layers=2))
    assert max(guard.layers) < host.num_blocks - 1
    return guard


def _plain(host: Host, guard: LatentGuard, prompt: Any, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([guard.encode(prompt).input_ids])
    with torch.inference_mode():
        out = host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@contextmanager
def _count_calls(modules: list[torch.nn.Module]) -> Iterator[list[int]]:
    """Counts completed forward calls of ``modules`` (a forward hook fires only when the module ran)."""
    calls = [0]

    def hook(*_args: Any) -> None:
        calls[0] += 1

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _count_prefills(model: torch.nn.Module) -> Iterator[list[int]]:
    """Counts [forward passes with more than one new token, all forward passes] through the embedding."""
    calls = [0, 0]

    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        calls[1] += 1
        if args[0].shape[-1] > 1:
            calls[0] += 1

    handle = model.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------- the verdict

@pytest.mark.parametrize("mode", ["paper", "tuned"])
def test_verdict_equals_check(mode: str, guards: dict[str, LatentGuard]) -> None:
    guard = guards[mode]
    # the first turn ends a sentence: no joined reading (guarded generation reads extra pieces only when the
    # whole prompt passes, so a harmful prompt with pieces keeps the whole prompt's score there)
    conversation = [{"role": "user", "content": "hello!"}, {"role": "assistant", "content": "hi!"},
                    {"role": "user", "content": HARMFUL[2]}]
    for prompt in [*HARMFUL[:4], *HARMLESS[:4], conversation]:
        result = guarded_generate(guard, prompt, max_new_tokens=2)
        alone = guard.check(prompt)
        assert abs(result.verdict.score - alone.score) < 1e-6
        assert result.verdict.harmful == alone.harmful == result.blocked
        assert result.verdict.layer_scores.keys() == alone.layer_scores.keys()


def test_tiny_guard_blocks_and_allows(guard: LatentGuard) -> None:
    assert guard.check(BLOCKED).harmful
    assert not any(v.harmful for v in guard.check_batch(HARMLESS))


# ------------------------------------------------------------------------------------------- allowed prompts

@pytest.mark.parametrize("prompt", HARMLESS[:4])
def test_allowed_answer_equals_plain_greedy_generate(prompt: str, guard: LatentGuard, tiny_host: Host) -> None:
    result = guarded_generate(guard, prompt, max_new_tokens=12)
    assert not result.blocked
    assert list(result.tokens) == _plain(tiny_host, guard, prompt, 12)
    assert result.text == tiny_host.tokenizer.decode(list(result.tokens), skip_special_tokens=True)
    assert result.usage.input_tokens == len(guard.encode(prompt).input_ids)
    assert result.usage.output_tokens == len(result.tokens)
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


def test_exactly_one_prefill(guard: LatentGuard, tiny_host: Host) -> None:
    with _count_prefills(tiny_host.model) as guarded:
        result = guarded_generate(guard, HARMLESS[0], max_new_tokens=10)
    with _count_prefills(tiny_host.model) as plain:
        _plain(tiny_host, guard, HARMLESS[0], 10)
    assert guarded[0] == plain[0] == 1
    assert guarded[1] == len(result.tokens) == plain[1]  # one prefill, then one pass per further token


def test_blocked_prompt_stops_after_the_last_layer_read(low_guard: LatentGuard) -> None:
    host = low_guard.host
    blocking = low_guard.with_settings(threshold=-1e6)
    blocks = list(host.model.model.layers)
    above = blocks[max(low_guard.layers):]  # block L's input is layer L: blocks L.. never run
    with _count_calls(above) as upper, _count_calls([host.model.lm_head]) as head, \
            _count_prefills(host.model) as passes:
        result = guarded_generate(blocking, HARMLESS[0], max_new_tokens=8)
    assert result.blocked and result.tokens == () and result.text == DEFAULT_REFUSAL
    assert result.finish_reason == "blocked" and result.usage.output_tokens == 0
    assert upper[0] == 0 and head[0] == 0 and passes == [1, 1]
    allowing = low_guard.with_settings(threshold=1e6)
    with _count_calls(above) as upper, _count_calls([host.model.lm_head]) as head:
        result = guarded_generate(allowing, HARMLESS[0], max_new_tokens=3)
    assert not result.blocked and head[0] == len(result.tokens) and upper[0] == len(above) * len(result.tokens)


def test_hooks_are_removed(guard: LatentGuard, tiny_host: Host) -> None:
    before = hook_ids(tiny_host.model)
    guarded_generate(guard, HARMLESS[0], max_new_tokens=3)
    guarded_generate(guard, BLOCKED, max_new_tokens=3)
    with pytest.raises(LatentGuardBlocked):
        guarded_generate(guard, BLOCKED, max_new_tokens=3, on_block="raise")
    stream = guarded_stream(guard, HARMLESS[1], max_new_tokens=20)
    next(stream), next(stream)
    stream.close()
    assert hook_ids(tiny_host.model) == before


# ------------------------------------------------------------------------------------------- streaming

def test_stream_yields_verdict_then_chunks_then_result(guard: LatentGuard) -> None:
    events = list(guarded_stream(guard, HARMLESS[2], max_new_tokens=8))
    assert isinstance(events[0], Verdict) and isinstance(events[-1], GuardedResult)
    chunks = events[1:-1]
    assert chunks and all(isinstance(chunk, GuardedChunk) for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == events[-1].text
    assert [t for chunk in chunks for t in chunk.token_ids] == list(events[-1].tokens)
    assert events[-1] == guarded_generate(guard, HARMLESS[2], max_new_tokens=8)


def test_stream_of_a_blocked_prompt(guard: LatentGuard) -> None:
    events = list(guarded_stream(guard, BLOCKED, max_new_tokens=8))
    assert [type(event) for event in events] == [Verdict, GuardedChunk, GuardedResult]
    assert events[0].harmful and events[1].text == DEFAULT_REFUSAL and events[2].blocked


def test_closing_a_stream_releases_the_lock(guard: LatentGuard, tiny_host: Host) -> None:
    stream = guarded_stream(guard, HARMLESS[0], max_new_tokens=50)
    next(stream)
    stream.close()
    got: list[bool] = []

    def take() -> None:
        got.append(tiny_host.lock.acquire(timeout=5))
        if got[-1]:
            tiny_host.lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    assert got == [True]


# ------------------------------------------------------------------------------------------- options

def test_stop_sequences_cut_the_answer(guard: LatentGuard) -> None:
    full = guarded_generate(guard, HARMLESS[3], max_new_tokens=12).text
    stop = full[4:7]
    assert len(stop) == 3 and stop in full
    cut = guarded_generate(guard, HARMLESS[3], max_new_tokens=12, stop=[stop, "zzzz"])
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    streamed = [e for e in guarded_stream(guard, HARMLESS[3], max_new_tokens=12, stop=[stop])
                if isinstance(e, GuardedChunk)]
    assert "".join(chunk.text for chunk in streamed) == cut.text


def test_sampling_is_reproducible_with_a_seed(guard: LatentGuard) -> None:
    a = guarded_generate(guard, HARMLESS[0], max_new_tokens=8, temperature=1.5, seed=3)
    b = guarded_generate(guard, HARMLESS[0], max_new_tokens=8, temperature=1.5, seed=3)
    greedy = guarded_generate(guard, HARMLESS[0], max_new_tokens=8)
    assert a.tokens == b.tokens and a.tokens != greedy.tokens


def test_context_limit_bounds_the_answer(guard: LatentGuard, tiny_host: Host) -> None:
    prompt = "explain photosynthesis simply " * 9  # ~232 of the tiny host's 256 positions
    room = tiny_host.max_positions - len(guard.encode(prompt).input_ids)  # type: ignore[operator]
    assert 0 < room < 40
    result = guarded_generate(guard, prompt, max_new_tokens=1000)
    assert len(result.tokens) <= room and result.finish_reason in ("length", "stop")
    full = guarded_generate(guard, "explain photosynthesis simply " * 30, max_new_tokens=5)  # cut to fit, no room
    assert full.verdict.truncated and full.tokens == () and full.finish_reason == "length"


def test_cancel_stops_decoding(guard: LatentGuard) -> None:
    cancel = threading.Event()
    cancel.set()
    result = guarded_generate(guard, HARMLESS[0], max_new_tokens=50, cancel=cancel)
    assert result.finish_reason == "cancelled" and result.tokens == () and not result.blocked


def test_on_block_raise_carries_the_verdict(guard: LatentGuard) -> None:
    with pytest.raises(LatentGuardBlocked) as info:
        guarded_generate(guard, BLOCKED, max_new_tokens=4, on_block="raise")
    assert info.value.verdict.harmful and abs(info.value.verdict.score - guard.check(BLOCKED).score) < 1e-6
    again = pickle.loads(pickle.dumps(info.value))
    assert again.verdict == info.value.verdict and str(again) == str(info.value)


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"max_new_tokens": True}, {"temperature": -1.0},
                                    {"temperature": math.nan}, {"on_block": "shout"}, {"stop": [""]},
                                    {"stop": [3]}])
def test_bad_arguments_are_input_errors(kwargs: dict[str, Any], guard: LatentGuard) -> None:
    options: dict[str, Any] = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(InputError):
        guarded_generate(guard, HARMLESS[0], **options)


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "assistant", "content": "hi"}], 3])
def test_bad_prompts_are_input_errors(prompt: Any, guard: LatentGuard, tiny_host: Host) -> None:
    before = hook_ids(tiny_host.model)
    with pytest.raises(InputError):
        guarded_generate(guard, prompt, max_new_tokens=4)
    assert hook_ids(tiny_host.model) == before


def test_failure_policy_blocks_on_nan_states(guard: LatentGuard, tiny_host: Host) -> None:
    model = copy.deepcopy(tiny_host.model)
    host = Host(model=model, tokenizer=tiny_host.tokenizer, name="nan")
    host.fingerprint_parts(None)  # broken in place after its fingerprint was taken (the fingerprint is kept)
    with torch.no_grad():
        for parameter in model.model.layers[1].parameters():
            parameter.fill_(math.nan)
    broken = LatentGuard(host, guard.fitted)
    result = guarded_generate(broken, HARMLESS[0], max_new_tokens=4)
    assert result.blocked and result.verdict.status == "error" and result.verdict.error == "non_finite_states"
    with pytest.raises(NumericalError):
        guarded_generate(broken.with_settings(on_error="raise"), HARMLESS[0], max_new_tokens=4)


# ------------------------------------------------------------------------------------------- steer on block
def test_steer_on_block_answers_with_the_steered_host(guard: LatentGuard) -> None:
    from latent_guardrail.generation import generate_replies
    from latent_guardrail.guarded import steered_refusal
    from latent_guardrail.steering import Direction, default_steer_layer, steer

    steering = guard.with_settings(steer_layer=2, steer_coeff=8.0, steer_fallback=False)
    result = guarded_generate(steering, BLOCKED, max_new_tokens=5, on_block="steer")
    assert result.blocked and result.finish_reason == "blocked" and result.verdict.harmful
    with steer(guard, Direction.from_guard(guard, "refusal"), layer=2, coeff=8.0, positions="all"):
        expected = generate_replies(guard.host.model, guard.host.tokenizer, [guard.encode(BLOCKED)],
                                    max_new_tokens=5)[0]
    assert result.text.strip() == expected and result.text != DEFAULT_REFUSAL
    assert result.usage.output_tokens == len(result.tokens) > 0
    alone = steered_refusal(steering, BLOCKED, max_new_tokens=5)
    assert alone.text == result.text and alone.blocked and alone.verdict.score == pytest.approx(result.verdict.score)
    default = guard.with_settings(steer_coeff=8.0, steer_fallback=False)  # no layer set: 40 % of the depth
    assert default_steer_layer(guard.host.num_blocks) == round(0.4 * guard.host.num_blocks)
    assert guarded_generate(default, BLOCKED, max_new_tokens=3, on_block="steer").blocked


def test_steer_on_block_leaves_allowed_prompts_and_hooks_alone(guard: LatentGuard) -> None:
    prompt = HARMLESS[0]
    assert not guard.check(prompt).harmful
    before = hook_ids(guard.host.model)
    plain = guarded_generate(guard, prompt, max_new_tokens=4)
    steered = guarded_generate(guard.with_settings(steer_layer=1, steer_coeff=8.0, steer_fallback=False), prompt,
                               max_new_tokens=4, on_block="steer")
    assert steered.text == plain.text and not steered.blocked
    events = guarded_stream(guard.with_settings(steer_layer=1, steer_coeff=8.0, steer_fallback=False), BLOCKED,
                            max_new_tokens=4, on_block="steer")
    next(events), next(events)  # verdict and first steered chunk, then abandon the stream
    events.close()
    assert hook_ids(guard.host.model) == before


def test_steer_on_block_falls_back_to_the_refusal_unless_the_host_refuses(guard: LatentGuard, monkeypatch) -> None:
    import latent_guardrail.refusal as refusal_module
    from latent_guardrail.guarded import steered_refusal

    steering = guard.with_settings(steer_layer=2, steer_coeff=8.0)  # steer_fallback on (the default)
    raw = guarded_generate(steering.with_settings(steer_fallback=False), BLOCKED, max_new_tokens=5, on_block="steer")
    assert not refusal_module.is_refusal(raw.text)  # the tiny random host does not refuse
    before = hook_ids(guard.host.model)
    events = list(guarded_stream(steering, BLOCKED, max_new_tokens=5, on_block="steer", refusal="No."))
    assert hook_ids(guard.host.model) == before
    result = events[-1]
    assert isinstance(result, GuardedResult) and result.text == "No." and result.blocked and result.tokens == ()
    assert [e.text for e in events if isinstance(e, GuardedChunk)] == ["No."]
    assert steered_refusal(steering, BLOCKED, max_new_tokens=5).text == DEFAULT_REFUSAL
    monkeypatch.setattr(refusal_module, "is_refusal", lambda reply: True)  # a host that does refuse: kept
    kept = guarded_generate(steering, BLOCKED, max_new_tokens=5, on_block="steer")
    assert kept.text == raw.text and kept.tokens == raw.tokens and kept.usage == raw.usage


def test_steer_on_block_bad_settings(guard: LatentGuard) -> None:
    import dataclasses

    from latent_guardrail.errors import ArtifactError, LayerError

    with pytest.raises(LayerError, match="valid layers"):
        guarded_generate(guard.with_settings(steer_layer=99), BLOCKED, max_new_tokens=2, on_block="steer")
    bare = LatentGuard(guard.host, dataclasses.replace(guard.fitted, refusal_direction=None))
    with pytest.raises(ArtifactError, match="no refusal direction"):
        guarded_generate(bare, BLOCKED, max_new_tokens=2, on_block="steer")
    with pytest.raises(Exception, match="finite"):
        guard.with_settings(steer_coeff=math.inf)
