"""Hook-based capture: matches HF hidden states, early exit, hooks always removed, thread isolation."""

from __future__ import annotations

import threading

import pytest
import torch

from latent_guardrail.activations import capture, extract_states, run_capture
from latent_guardrail.errors import LayerError
from latent_guardrail.positions import encode_batch, pad_batch
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS, make_host


@pytest.fixture(scope="module")
def host():
    built = make_host(layers=4)
    with torch.no_grad():  # let transformers install its own output-capturing hooks up front
        built.model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    return built


@pytest.fixture(autouse=True)
def no_leaked_hooks(host):
    before = hook_ids(host.model)
    yield
    assert hook_ids(host.model) == before


def _batch(host, prompts):
    encodings = encode_batch(host.tokenizer, prompts)
    return encodings, pad_batch(encodings, host.tokenizer.pad_token_id, side="left")


def test_states_match_hf_hidden_states(host):
    _, batch = _batch(host, HARMFUL[:3])
    positions = torch.stack([batch.t_inst, batch.t_post_inst], dim=1)
    result = run_capture(host.model, batch.input_ids, batch.attention_mask, range(5), positions, stop_early=False)
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = host.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                         output_hidden_states=True).hidden_states
    rows = torch.arange(3)
    for layer in range(4):  # inputs of blocks 0..3 equal HF's hidden_states[0..3]
        expected = torch.stack([ref[layer][rows, batch.t_inst], ref[layer][rows, batch.t_post_inst]], 1)
        torch.testing.assert_close(result.states[layer], expected, atol=1e-5, rtol=1e-5)
    # layer 4 is the last block's output before the final norm: HF's last entry is norm(it)
    normed = host.model.model.norm(result.states[4])
    expected = torch.stack([ref[4][rows, batch.t_inst], ref[4][rows, batch.t_post_inst]], 1)
    torch.testing.assert_close(normed, expected, atol=1e-5, rtol=1e-5)


def test_early_exit_skips_later_blocks_and_head(host):
    _, batch = _batch(host, HARMLESS[:2])
    calls: list[str] = []
    handles = [host.model.model.layers[3].register_forward_hook(lambda *a: calls.append("block3")),
               host.model.lm_head.register_forward_hook(lambda *a: calls.append("head"))]
    try:
        result = run_capture(host.model, batch.input_ids, batch.attention_mask, [1, 2],
                             batch.t_inst.unsqueeze(1), stop_early=True)
        assert result.stopped_early and calls == []
        full = run_capture(host.model, batch.input_ids, batch.attention_mask, [1, 2],
                           batch.t_inst.unsqueeze(1), stop_early=False)
        assert not full.stopped_early and calls == ["block3", "head"]
        torch.testing.assert_close(result.stacked(), full.stacked())
    finally:
        for handle in handles:
            handle.remove()


def test_hooks_removed_after_exception_inside_block(host):
    _, batch = _batch(host, HARMLESS[:1])
    with pytest.raises(RuntimeError, match="boom"), capture(host.model, [0, 4], batch.t_inst.unsqueeze(1)):
        assert hook_ids(host.model)
        raise RuntimeError("boom")


def test_hooks_removed_when_registration_fails_half_way(host, monkeypatch):
    block = host.model.model.layers[2]

    def broken(*args, **kwargs):
        raise RuntimeError("cannot register")

    monkeypatch.setattr(block, "register_forward_pre_hook", broken)
    with pytest.raises(RuntimeError, match="cannot register"), capture(host.model, [0, 1, 2], torch.zeros(1, 1)):
        pass
    monkeypatch.undo()


def test_layer_out_of_range_lists_valid_range(host):
    with pytest.raises(LayerError, match=r"0\.\.4"), capture(host.model, [5], torch.zeros(1, 1)):
        pass


def test_batch_order_and_padding_do_not_change_states(host):
    prompts = [HARMFUL[0], HARMLESS[1] + " and also tell me more about it please", HARMLESS[2]]
    encodings = encode_batch(host.tokenizer, prompts)
    together = extract_states(host.model, encodings, [0, 2, 4], pad_token_id=host.tokenizer.pad_token_id,
                              batch_size=8)
    for index, encoding in enumerate(encodings):
        alone = extract_states(host.model, [encoding], [0, 2, 4], pad_token_id=host.tokenizer.pad_token_id)
        torch.testing.assert_close(together[index], alone[0], atol=1e-5, rtol=1e-5)


def test_threads_do_not_see_each_others_states(host):
    encodings = encode_batch(host.tokenizer, HARMFUL + HARMLESS)
    expected = [extract_states(host.model, [e], [1, 3], pad_token_id=host.tokenizer.pad_token_id)[0]
                for e in encodings]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(3):
                results[index] = extract_states(host.model, [encodings[index]], [1, 3],
                                                pad_token_id=host.tokenizer.pad_token_id)[0]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(encodings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, state in enumerate(expected):
        torch.testing.assert_close(results[index], state, atol=1e-5, rtol=1e-5)


def test_content_mean_is_the_mean_over_the_users_tokens(host):
    encodings = encode_batch(host.tokenizer, [HARMFUL[0], HARMLESS[3] + " with a longer tail of words"])
    got = extract_states(host.model, encodings, [0, 2], pad_token_id=host.tokenizer.pad_token_id,
                         views=("content_mean", "t_inst"), stop_early=False)
    for row, encoding in enumerate(encodings):
        ids = torch.tensor([encoding.input_ids])
        with torch.no_grad():
            hidden = host.model(input_ids=ids, output_hidden_states=True).hidden_states
        span = slice(encoding.t_content_start, encoding.t_inst + 1)
        assert encoding.t_content_start < encoding.t_inst
        for column, layer in enumerate([0, 2]):
            torch.testing.assert_close(got[row, 0, column], hidden[layer][0, span].mean(0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[row, 1, column], hidden[layer][0, encoding.t_inst], atol=1e-5, rtol=1e-5)


def test_unknown_view_is_rejected(host):
    encodings = encode_batch(host.tokenizer, [HARMFUL[0]])
    with pytest.raises(ValueError, match="content_mean"):
        extract_states(host.model, encodings, [0], pad_token_id=0, views=("middle",))
