"""The one decode loop (latent_guardrail.decoding), its call options, and the stream helpers it shares.

On a tiny random host: greedy decoding equals ``model.generate``; stop sequences, the context limit, end tokens,
cancel and seeded sampling behave as documented; the plain path equals guarded generation's answer.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from latent_guardrail.decoding import (
    CallOptions,
    Decoded,
    TextChunk,
    call_options,
    decode,
    end_token_ids,
    generate,
    held_back,
    prefill,
)
from latent_guardrail.directions import mean_difference
from latent_guardrail.errors import InputError
from latent_guardrail.generation import generate_replies
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import guarded_generate
from latent_guardrail.hosts import Host
from latent_guardrail.integrations.nemo.provider import LatentHostModel
from latent_guardrail.messages import content_text, guard_role, require_user_last
from latent_guardrail.positions import encode_prompt
from latent_guardrail.streaming import call_in_thread, drain
from tests.support.models import HARMFUL, HARMLESS


def _ids(host: Host, prompt: str) -> list[int]:
    return list(encode_prompt(host.tokenizer, prompt).input_ids)


def _run(host: Host, ids: list[int], options: CallOptions, *, max_positions: int | None = None,
         cancel: threading.Event | None = None) -> tuple[list[TextChunk], Decoded]:
    logits, cache = prefill(host.model, ids)
    items = list(decode(host.model, host.tokenizer, logits, cache, prompt_tokens=len(ids), options=options,
                        max_positions=max_positions, cancel=cancel))
    chunks, final = items[:-1], items[-1]
    assert isinstance(final, Decoded) and all(isinstance(chunk, TextChunk) for chunk in chunks)
    return [chunk for chunk in chunks if isinstance(chunk, TextChunk)], final


def _generate(host: Host, ids: list[int], max_new_tokens: int) -> list[int]:
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        out = host.model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor),
                                  max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, tensor.shape[1]:].tolist()


def _stop_in(text: str) -> str:
    """A two-letter ASCII stop sequence that occurs in ``text`` after its first characters."""
    for start in range(2, len(text) - 1):
        piece = text[start:start + 2]
        if piece.isascii() and piece.isalpha():
            return piece
    raise AssertionError(f"no ASCII pair in {text!r}")


# ------------------------------------------------------------------------------------------- the loop

@pytest.mark.parametrize("prompt", HARMLESS[:3])
def test_greedy_decoding_equals_model_generate(tiny_host: Host, prompt: str) -> None:
    ids = _ids(tiny_host, prompt)
    chunks, final = _run(tiny_host, ids, CallOptions(max_new_tokens=10))
    assert list(final.tokens) == _generate(tiny_host, ids, 10)
    assert final.finish_reason == "length" and len(final.tokens) == 10
    assert final.text == tiny_host.tokenizer.decode(list(final.tokens), skip_special_tokens=True)
    assert "".join(chunk.text for chunk in chunks) == final.text
    assert [token for chunk in chunks for token in chunk.token_ids] == list(final.tokens)


def test_one_forward_pass_per_further_token(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[0])
    passes: list[int] = []
    handle = tiny_host.model.get_input_embeddings().register_forward_pre_hook(
        lambda _module, args: passes.append(args[0].shape[-1]))
    try:
        _, final = _run(tiny_host, ids, CallOptions(max_new_tokens=6))
    finally:
        handle.remove()
    assert passes == [len(ids)] + [1] * (len(final.tokens) - 1)  # the prefill, then none after the last token


def test_stop_sequence_cuts_the_text_and_ends_decoding(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[3])
    _, full = _run(tiny_host, ids, CallOptions(max_new_tokens=16))
    stop = _stop_in(full.text)
    chunks, final = _run(tiny_host, ids, CallOptions(max_new_tokens=16, stop=("never-there", stop)))
    assert final.text == full.text[:full.text.index(stop)] and final.finish_reason == "stop"
    assert "".join(chunk.text for chunk in chunks) == final.text
    assert all(stop not in chunk.text for chunk in chunks)
    assert final.tokens == full.tokens[:len(final.tokens)] and len(final.tokens) < len(full.tokens)
    cut = tiny_host.tokenizer.decode(list(final.tokens[:-1]), skip_special_tokens=True)
    assert stop not in cut  # decoding ended at the first token that completed the stop sequence


def test_text_held_back_for_a_stop_sequence_is_flushed_at_the_end(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[3])
    _, full = _run(tiny_host, ids, CallOptions(max_new_tokens=8))
    tail = full.text[-1]
    chunks, final = _run(tiny_host, ids, CallOptions(max_new_tokens=8, stop=(tail + "\x00never",)))
    assert final.text == full.text and final.finish_reason == "length"
    assert chunks[-1].token_ids == () and chunks[-1].text.endswith(tail)  # held back, then flushed
    assert "".join(chunk.text for chunk in chunks) == full.text


def test_held_back_counts_possible_stop_starts() -> None:
    assert held_back("hello wo", ["world"]) == 2
    assert held_back("abc", ["cd", "bcx"]) == 2
    assert held_back("abc", ["xyz"]) == 0 and held_back("abc", []) == 0


def test_the_context_limit_cuts_the_budget(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[1])
    _, final = _run(tiny_host, ids, CallOptions(max_new_tokens=50), max_positions=len(ids) + 3)
    assert len(final.tokens) == 3 and final.finish_reason == "length"
    chunks, full = _run(tiny_host, ids, CallOptions(max_new_tokens=50), max_positions=len(ids))
    assert full.tokens == () and full.text == "" and chunks == []


def test_an_end_token_stops_and_is_kept(tiny_host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _ids(tiny_host, HARMLESS[2])
    _, free = _run(tiny_host, ids, CallOptions(max_new_tokens=5))
    end = free.tokens[2]
    monkeypatch.setattr(tiny_host.model.generation_config, "eos_token_id", [end])
    assert end in end_token_ids(tiny_host.model, tiny_host.tokenizer)
    assert tiny_host.tokenizer.eos_token_id in end_token_ids(tiny_host.model, tiny_host.tokenizer)
    _, final = _run(tiny_host, ids, CallOptions(max_new_tokens=5))
    first = free.tokens.index(end)
    assert final.tokens == free.tokens[:first + 1] and final.finish_reason == "stop"
    assert final.text == tiny_host.tokenizer.decode(list(free.tokens[:first]), skip_special_tokens=True)


def test_cancel_is_checked_before_each_token(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[0])
    cancel = threading.Event()
    cancel.set()
    chunks, final = _run(tiny_host, ids, CallOptions(max_new_tokens=5), cancel=cancel)
    assert final.tokens == () and final.finish_reason == "cancelled" and chunks == []
    cancel = threading.Event()
    logits, cache = prefill(tiny_host.model, ids)
    steps = decode(tiny_host.model, tiny_host.tokenizer, logits, cache, prompt_tokens=len(ids),
                   options=CallOptions(max_new_tokens=20), cancel=cancel)
    next(steps), next(steps)
    cancel.set()
    final = drain(steps, Decoded)
    assert len(final.tokens) == 2 and final.finish_reason == "cancelled"


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(tiny_host: Host) -> None:
    ids = _ids(tiny_host, HARMLESS[4])
    state = torch.get_rng_state()
    first = generate(tiny_host.model, tiny_host.tokenizer, ids, CallOptions(12, temperature=1.5, seed=3))
    again = generate(tiny_host.model, tiny_host.tokenizer, ids, CallOptions(12, temperature=1.5, seed=3))
    other = generate(tiny_host.model, tiny_host.tokenizer, ids, CallOptions(12, temperature=1.5, seed=4))
    assert torch.equal(torch.get_rng_state(), state)
    assert first == again and first.tokens != other.tokens
    greedy = generate(tiny_host.model, tiny_host.tokenizer, ids, CallOptions(12))
    assert first.tokens != greedy.tokens  # a random host at temperature 1.5 does not follow the argmax


def test_plain_generation_equals_the_guarded_answer(tiny_host: Host) -> None:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    for prompt in HARMLESS[:3]:
        guarded = guarded_generate(guard, prompt, max_new_tokens=7, temperature=0.7, seed=11)
        plain = generate(tiny_host.model, tiny_host.tokenizer, guard.encode(prompt).input_ids,
                         call_options(7, 0.7, 11), max_positions=tiny_host.max_positions)
        assert not guarded.blocked
        assert (plain.text, plain.tokens, plain.finish_reason) == (guarded.text, guarded.tokens, guarded.finish_reason)


def test_generate_replies_keeps_input_order_and_greedy_tokens(tiny_host: Host) -> None:
    encodings = [encode_prompt(tiny_host.tokenizer, prompt) for prompt in [HARMLESS[6], HARMLESS[0], HARMLESS[9]]]
    replies = generate_replies(tiny_host.model, tiny_host.tokenizer, encodings, max_new_tokens=5, batch_size=1)
    expected = [tiny_host.tokenizer.decode(_generate(tiny_host, list(e.input_ids), 5), skip_special_tokens=True)
                .strip() for e in encodings]
    assert replies == expected
    with pytest.raises(ValueError, match="batch_size"):
        generate_replies(tiny_host.model, tiny_host.tokenizer, encodings, batch_size=0)


# ------------------------------------------------------------------------------------------- call options

def test_call_options_are_validated_once_here() -> None:
    assert call_options(3) == CallOptions(3, 0.0, None, ())
    options = call_options(4, 1, 7, "END")
    assert options == CallOptions(4, 1.0, 7, ("END",)) and isinstance(options.temperature, float)
    assert call_options(2, stop=["a", "b"]).stop == ("a", "b") and call_options(2, stop=[]).stop == ()
    assert hash(call_options(2, 0)) == hash(CallOptions(2, 0.0, None, ()))  # usable as a key
    for bad in (0, -3, True, 2.0, "3", None):
        with pytest.raises(InputError, match="max_new_tokens must be a positive int"):
            call_options(bad)
    with pytest.raises(InputError, match="max_tokens must be a positive int"):
        call_options(0, max_tokens_name="max_tokens")
    for bad_temperature in (-0.1, math.nan, math.inf, True, "0"):
        with pytest.raises(InputError, match="temperature must be a finite number >= 0"):
            call_options(2, bad_temperature)
    for bad_stop in ([""], ["ok", 3], [None]):
        with pytest.raises(InputError, match="stop sequences must be non-empty strings"):
            call_options(2, stop=bad_stop)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- stream helpers

def test_drain_returns_the_last_result_and_closes_the_stream() -> None:
    closed: list[bool] = []

    def events(fail: bool) -> Iterator[Any]:
        try:
            yield 1
            yield "first"
            if fail:
                raise ValueError("boom")
            yield 2
            yield "last"
        finally:
            closed.append(True)

    assert drain(events(False), str) == "last" and closed == [True]
    with pytest.raises(ValueError, match="boom"):
        drain(events(True), str)
    assert closed == [True, True]
    with pytest.raises(RuntimeError, match="guarded generation ended without a result"):
        drain(iter([1, 2]), str, "guarded generation")


def test_call_in_thread_runs_off_the_loop_and_sets_cancel() -> None:
    seen: list[threading.Event] = []

    def work(cancel: threading.Event) -> int:
        seen.append(cancel)
        assert not cancel.is_set()
        return threading.get_ident()

    async def run() -> tuple[int, int]:
        return await call_in_thread(work), threading.get_ident()

    worker, loop = asyncio.run(run())
    assert worker != loop and seen[0].is_set()

    def failing(_cancel: threading.Event) -> int:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        asyncio.run(call_in_thread(failing))


def test_a_cancelled_await_sets_cancel_for_the_worker() -> None:
    started, stopped = threading.Event(), threading.Event()

    def work(cancel: threading.Event) -> None:
        started.set()
        if cancel.wait(timeout=10):
            stopped.set()

    async def run() -> None:
        task = asyncio.ensure_future(call_in_thread(work))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert stopped.wait(timeout=10)


# ------------------------------------------------------------------------------------------- directions, messages

def test_mean_difference_is_refused_minus_accepted_in_the_input_dtype() -> None:
    states = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.tensor([True, False, True, False, False, True, False])
    out = mean_difference(states, mask)
    expected = states[[0, 2, 5]].sum(0) / 3 - states[[1, 3, 4, 6]].sum(0) / 4
    assert out.dtype == torch.float64 and out.shape == (3, 5)
    torch.testing.assert_close(out, expected)
    assert mean_difference(states.float(), mask).dtype == torch.float32
    assert torch.equal(mean_difference(states, mask), -mean_difference(states, ~mask))


def test_core_message_translation() -> None:
    assert [guard_role(name) for name in ("human", "user", "ai", "assistant", "system", "tool", "x")] == \
        ["user", "user", "assistant", "assistant", "system", None, None]
    assert content_text("hi") == "hi" and content_text(None) == "" and content_text(42) == ""
    parts = ["a", {"type": "text", "text": "b"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": 3},
             {"type": "text"}]
    assert content_text(parts) == "a\nb"
    require_user_last([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    for bad in ([], [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]):
        with pytest.raises(InputError, match="must end with a user message"):
            require_user_last(bad)


def test_the_nemo_plain_path_decodes_with_the_same_loop(tiny_host: Host) -> None:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    plain = LatentHostModel(guard, max_new_tokens=9, guarded=False)
    guarded = guarded_generate(guard, HARMLESS[3], max_new_tokens=9)
    response = asyncio.run(plain.generate_async(HARMLESS[3]))
    assert response.content == guarded.text and response.usage.output_tokens == len(guarded.tokens)
    assert response.provider_metadata["latent_guard"] is None and response.finish_reason == "length"
    stop = _stop_in(guarded.text)
    cut = asyncio.run(plain.generate_async(HARMLESS[3], stop=[stop]))
    expected = guarded_generate(guard, HARMLESS[3], max_new_tokens=9, stop=[stop])
    assert cut.content == expected.text == guarded.text[:guarded.text.index(stop)] and cut.finish_reason == "stop"
    assert cut.usage.output_tokens == len(expected.tokens)  # decoding ends at the stop sequence
    with pytest.raises(InputError, match="max_tokens must be a positive int"):
        asyncio.run(plain.generate_async(HARMLESS[3], max_tokens=0))
