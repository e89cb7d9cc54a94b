"""Activation addition: exact deltas, padding untouched, prefill vs decode, composition, hooks always removed."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator

import pytest
import torch

from latent_guardrail.activations import capture
from latent_guardrail.errors import ArtifactError, FingerprintMismatchError, InputError, LayerError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.positions import encode_batch, pad_batch
from latent_guardrail.steering import Direction, add_steering, steer
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS, make_host

LAYERS = 4
HIDDEN = 32


@pytest.fixture(scope="module")
def host() -> Host:
    built = make_host(layers=LAYERS, hidden=HIDDEN)
    with torch.no_grad():  # let transformers install its own output-capturing hooks up front
        built.model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    return built


@pytest.fixture(autouse=True)
def no_leaked_hooks(host: Host) -> Iterator[None]:
    before = hook_ids(host.model)
    yield
    assert hook_ids(host.model) == before


@pytest.fixture(scope="module")
def guard(host: Host) -> LatentGuard:
    return LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="paper", progress=False)


@pytest.fixture(scope="module")
def vector() -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def batch(host: Host):  # left padded: row 1 is shorter than row 0
    encodings = encode_batch(host.tokenizer, ["write a long poem about the sea and the sky at night", "hi"])
    return pad_batch(encodings, host.tokenizer.pad_token_id, side="left")


def _logits(host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return host.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def _states(host: Host, batch, layer: int, **steering) -> torch.Tensor:
    """Residual states ``(batch, seq, d)`` at ``layer`` as the next block sees them, with optional steering."""
    seq = batch.input_ids.shape[1]
    positions = torch.arange(seq).expand(batch.input_ids.shape[0], -1)
    handle = add_steering(host.model, layer=layer, **steering) if steering else None
    try:
        with capture(host.model, [layer], positions) as result:  # registered after the steering: sees it
            _logits(host, batch.input_ids, batch.attention_mask)
    finally:
        if handle is not None:
            handle.remove()
    return result.states[layer]


def _generate(host: Host, batch, **kwargs):
    with torch.no_grad():
        return host.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   max_new_tokens=4, do_sample=False, pad_token_id=host.tokenizer.pad_token_id,
                                   output_scores=True, return_dict_in_generate=True, **kwargs)


# ------------------------------------------------------------------------------------------- effect on outputs
def test_steering_changes_logits_deterministically(host: Host, batch, vector: torch.Tensor) -> None:
    base = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=1, coeff=4.0):
        first = _logits(host, batch.input_ids, batch.attention_mask)
        second = _logits(host, batch.input_ids, batch.attention_mask)
    assert not torch.allclose(first, base)
    assert torch.equal(first, second)


def test_coeff_zero_is_a_no_op(host: Host, batch, vector: torch.Tensor) -> None:
    base = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=2, coeff=0.0):
        steered = _logits(host, batch.input_ids, batch.attention_mask)
    assert torch.equal(steered, base)


@pytest.mark.parametrize("layer", [0, 2, LAYERS, -1])
def test_removing_restores_the_exact_logits(host: Host, batch, vector: torch.Tensor, layer: int) -> None:
    base = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=layer, coeff=3.0):
        assert not torch.equal(_logits(host, batch.input_ids, batch.attention_mask), base)
    assert torch.equal(_logits(host, batch.input_ids, batch.attention_mask), base)
    handle = add_steering(host.model, vector, layer=layer, coeff=3.0)
    assert handle.active
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert torch.equal(_logits(host, batch.input_ids, batch.attention_mask), base)


def test_handle_is_a_context_manager_too(host: Host, batch, vector: torch.Tensor) -> None:
    base = _logits(host, batch.input_ids, batch.attention_mask)
    with add_steering(host.model, vector, layer=1, coeff=2.0) as handle:
        assert handle.layer == 1 and handle.coeff == 2.0
        assert not torch.equal(_logits(host, batch.input_ids, batch.attention_mask), base)
    assert not handle.active


def test_last_layer_steers_the_output_of_the_last_block(host: Host, batch, vector: torch.Tensor) -> None:
    base = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=LAYERS, coeff=2.0):
        last = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=-1, coeff=2.0):
        assert torch.equal(_logits(host, batch.input_ids, batch.attention_mask), last)
    assert not torch.equal(last, base)


# ------------------------------------------------------------------------------------------- hooks
def test_no_hooks_remain_after_an_exception_inside_the_block(host: Host, vector: torch.Tensor) -> None:
    before = hook_ids(host.model)
    with pytest.raises(RuntimeError, match="boom"), steer(host.model, vector, layer=1, coeff=1.0):
        assert hook_ids(host.model) != before
        raise RuntimeError("boom")
    assert hook_ids(host.model) == before


def test_no_hooks_remain_after_an_exception_in_the_forward_pass(host: Host, batch, vector: torch.Tensor) -> None:
    with steer(host.model, vector, layer=1, coeff=1.0, positions="context", until=torch.tensor([1, 2, 3])), \
            pytest.raises(InputError, match="until has batch 3"):
        _logits(host, batch.input_ids, batch.attention_mask)


def test_hooks_removed_when_registration_fails_half_way(host: Host, vector: torch.Tensor, monkeypatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("cannot register")

    monkeypatch.setattr(host.model.model.layers[2], "register_forward_pre_hook", broken)
    with pytest.raises(RuntimeError, match="cannot register"):
        add_steering(host.model, vector, layer=2, coeff=1.0)


# ------------------------------------------------------------------------------------------- positions, padding
def test_adds_exactly_coeff_times_v_and_leaves_padding_untouched(host: Host, batch, vector: torch.Tensor) -> None:
    base = _states(host, batch, 2)
    steered = _states(host, batch, 2, direction=vector, coeff=1.5)
    real = batch.attention_mask.bool()
    assert not real.all()  # the batch is padded
    assert torch.equal(steered[~real], base[~real])
    torch.testing.assert_close(steered[real] - base[real], (1.5 * vector).expand(int(real.sum()), -1))


def test_explicit_attention_mask_is_used_when_the_call_has_none(host: Host, batch, vector: torch.Tensor) -> None:
    seq = batch.input_ids.shape[1]
    positions = torch.arange(seq).expand(2, -1)
    real = batch.attention_mask.bool()
    outs = []
    for steering in (None, {"coeff": 1.0, "attention_mask": batch.attention_mask}):
        handle = add_steering(host.model, vector, layer=1, **steering) if steering else None
        try:
            with capture(host.model, [1], positions) as result, torch.no_grad():
                host.model(input_ids=batch.input_ids)  # no mask in the call
        finally:
            if handle is not None:
                handle.remove()
        outs.append(result.states[1])
    assert torch.equal(outs[1][~real], outs[0][~real])
    torch.testing.assert_close(outs[1][real] - outs[0][real], vector.expand(int(real.sum()), -1))


def test_each_row_of_a_padded_batch_equals_steering_it_alone(host: Host, batch, vector: torch.Tensor) -> None:
    with steer(host.model, vector, layer=1, coeff=3.0):
        together = _logits(host, batch.input_ids, batch.attention_mask)
        for row in range(2):
            keep = batch.attention_mask[row].bool()
            alone = _logits(host, batch.input_ids[row, keep][None], batch.attention_mask[row, keep][None])
            torch.testing.assert_close(together[row, keep], alone[0], atol=1e-5, rtol=1e-4)


def test_context_steers_only_positions_before_until(host: Host, batch, vector: torch.Tensor) -> None:
    until = batch.t_inst  # (batch,) padded coordinates
    base = _states(host, batch, 1)
    steered = _states(host, batch, 1, direction=vector, coeff=2.0, positions="context", until=until)
    seq = batch.input_ids.shape[1]
    before = (torch.arange(seq)[None] < until[:, None]) & batch.attention_mask.bool()
    assert before.any() and (~before).any()
    assert torch.equal(steered[~before], base[~before])
    torch.testing.assert_close(steered[before] - base[before], (2.0 * vector).expand(int(before.sum()), -1))
    as_int = _states(host, batch, 1, direction=vector, coeff=2.0, positions="context", until=int(until.min()))
    assert torch.equal(as_int[:, int(until.min()):], base[:, int(until.min()):])


def test_prompt_leaves_decoding_steps_alone_and_all_does_not(host: Host, batch, vector: torch.Tensor) -> None:
    runs = {}
    for name, options in {"prompt": {}, "all": {"positions": "all"}, "decode": {"decode": True}}.items():
        with steer(host.model, vector, layer=1, coeff=4.0, **options):
            runs[name] = _generate(host, batch)
    prompt, every, decode = runs["prompt"], runs["all"], runs["decode"]
    assert torch.equal(prompt.scores[0], every.scores[0])  # the same prefill pass
    assert not torch.allclose(prompt.scores[1], every.scores[1])  # decoding steps differ
    assert all(torch.equal(a, b) for a, b in zip(every.scores, decode.scores, strict=True))


def test_prompt_steering_reaches_decoding_through_the_cache(host: Host, batch, vector: torch.Tensor) -> None:
    base = _generate(host, batch)
    with steer(host.model, vector, layer=1, coeff=4.0):
        first = _generate(host, batch)
        second = _generate(host, batch)
    assert torch.equal(first.sequences, second.sequences)
    assert not torch.allclose(first.scores[0], base.scores[0])
    assert torch.equal(_generate(host, batch).sequences, base.sequences)


# ------------------------------------------------------------------------------------------- composition
def test_two_steerings_add_up(host: Host, batch, vector: torch.Tensor) -> None:
    other = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(2))
    base = _states(host, batch, 2)
    with steer(host.model, vector, layer=2, coeff=1.0):
        both = _states(host, batch, 2, direction=other, coeff=-0.5)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(both[real] - base[real], (vector - 0.5 * other).expand(int(real.sum()), -1))
    assert torch.equal(both[~real], base[~real])
    combined = _states(host, batch, 2, direction=vector - 0.5 * other, coeff=1.0)
    torch.testing.assert_close(both, combined)


def test_steerings_at_two_layers_compose(host: Host, batch, vector: torch.Tensor) -> None:
    with steer(host.model, vector, layer=1, coeff=1.0), steer(host.model, vector, layer=3, coeff=2.0):
        ab = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=3, coeff=2.0), steer(host.model, vector, layer=1, coeff=1.0):
        ba = _logits(host, batch.input_ids, batch.attention_mask)
    with steer(host.model, vector, layer=1, coeff=1.0):
        one = _logits(host, batch.input_ids, batch.attention_mask)
    assert torch.equal(ab, ba)
    assert not torch.allclose(ab, one)


# ------------------------------------------------------------------------------------------- directions
@pytest.mark.parametrize("kind", ["harmfulness", "refusal"])
def test_direction_from_guard(guard: LatentGuard, kind: str) -> None:
    direction = Direction.from_guard(guard, kind)  # type: ignore[arg-type]
    assert direction.kind == kind
    assert direction.vectors.shape == (LAYERS + 1, HIDDEN) and direction.vectors.dtype == torch.float32
    assert direction.fingerprint == guard.fingerprint
    assert direction.layers == tuple(range(LAYERS + 1))
    if kind == "harmfulness":
        expected = guard.fitted.centroids.harmful - guard.fitted.centroids.harmless
        torch.testing.assert_close(direction.vector(2), expected[2].float())


def test_steering_a_guard_or_host_with_its_direction(guard: LatentGuard, host: Host, batch) -> None:
    direction = Direction.from_guard(guard, "harmfulness")
    base = _logits(host, batch.input_ids, batch.attention_mask)
    for target in (guard, host, host.model):
        with steer(target, direction, layer=2, coeff=1.0):
            steered = _logits(host, batch.input_ids, batch.attention_mask)
        assert not torch.equal(steered, base)
    with steer(host.model, direction.vectors, layer=2, coeff=1.0):  # a (layers, d) tensor: its row for the layer
        assert torch.equal(_logits(host, batch.input_ids, batch.attention_mask), steered)


def test_missing_refusal_direction_is_a_clear_error(guard: LatentGuard) -> None:
    bare = LatentGuard(guard.host, dataclasses.replace(guard.fitted, refusal_direction=None))
    with pytest.raises(ArtifactError, match="no refusal direction"):
        Direction.from_guard(bare, "refusal")
    with pytest.raises(InputError, match="kind must be one of"):
        Direction.from_guard(guard, "fear")  # type: ignore[arg-type]


def test_direction_of_another_host_is_refused(guard: LatentGuard, host: Host) -> None:
    direction = Direction.from_guard(guard, "refusal")
    forged = dataclasses.replace(direction, fingerprint="0" * 16)
    with pytest.raises(FingerprintMismatchError, match="another host"):
        add_steering(guard, forged, layer=1, coeff=1.0)
    stranger = make_host(layers=LAYERS, hidden=HIDDEN, seed=7)
    with pytest.raises(FingerprintMismatchError, match="weights"):
        add_steering(stranger, direction, layer=1, coeff=1.0)
    assert not hook_ids(stranger.model)


# ------------------------------------------------------------------------------------------- bad input
def test_layer_out_of_range_lists_the_valid_range(host: Host, vector: torch.Tensor) -> None:
    for layer in (LAYERS + 1, -(LAYERS + 2)):
        with pytest.raises(LayerError, match=rf"valid layers are 0\.\.{LAYERS}"):
            add_steering(host.model, vector, layer=layer, coeff=1.0)


@pytest.mark.parametrize("coeff", [math.nan, math.inf, -math.inf, True, "1", None])
def test_bad_coefficients(host: Host, vector: torch.Tensor, coeff: object) -> None:
    with pytest.raises(InputError, match="coeff"):
        add_steering(host.model, vector, layer=1, coeff=coeff)  # type: ignore[arg-type]


@pytest.mark.parametrize(("direction", "message"), [
    (torch.zeros(HIDDEN), "zero norm"),
    (torch.full((HIDDEN,), math.nan), "NaN"),
    (torch.ones(HIDDEN + 1), "hidden size"),
    (torch.ones(3, HIDDEN), "one per residual layer"),
    (torch.ones(2, 2, HIDDEN), "shape"),
])
def test_bad_vectors(host: Host, direction: torch.Tensor, message: str) -> None:
    with pytest.raises(InputError, match=message):
        add_steering(host.model, direction, layer=1, coeff=1.0)


def test_bad_positions(host: Host, vector: torch.Tensor) -> None:
    with pytest.raises(InputError, match="positions must be one of"):
        add_steering(host.model, vector, layer=1, coeff=1.0, positions="suffix")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="needs until"):
        add_steering(host.model, vector, layer=1, coeff=1.0, positions="context")
    with pytest.raises(InputError, match="only used with positions='context'"):
        add_steering(host.model, vector, layer=1, coeff=1.0, until=3)
    with pytest.raises(ValueError):
        add_steering(host.model, vector, layer=1, coeff=math.nan)  # InputError is a ValueError


def test_bfloat16_host_adds_in_its_own_dtype(vector: torch.Tensor) -> None:
    low = make_host(layers=2, hidden=HIDDEN, dtype=torch.bfloat16)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base = low.model(input_ids=ids).logits
        with steer(low.model, vector, layer=1, coeff=2.0):
            steered = low.model(input_ids=ids).logits
    assert steered.dtype == torch.bfloat16 and not torch.equal(steered, base)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_steer_prints_both_answers(tmp_path) -> None:
    from typer.testing import CliRunner

    from latent_guardrail.cli import app
    from latent_guardrail.hosts import load_host

    private = make_host(layers=2, hidden=HIDDEN, seed=3)  # save_pretrained edits the config: keep it private
    private.model.save_pretrained(tmp_path / "model")
    private.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_host(str(tmp_path / "model"))
    LatentGuard.calibrate(loaded, HARMFUL, HARMLESS, mode="paper", progress=False).save(tmp_path / "guard")
    runner = CliRunner()
    common = ["steer", "--guard", str(tmp_path / "guard"), "--model", str(tmp_path / "model"),
              "--max-new-tokens", "3", "write a poem"]
    result = runner.invoke(app, [*common, "--layer", "1", "--coeff", "8", "--direction", "harmfulness"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "without steering" in flat and "with steering" in flat and "harmfulness direction, layer 1" in flat
    bad = runner.invoke(app, [*common, "--layer", "9"], catch_exceptions=False)
    assert bad.exit_code == 2 and "valid layers are 0..2" in " ".join(bad.output.split())
    bad = runner.invoke(app, [*common, "--layer", "1", "--direction", "fear"], catch_exceptions=False)
    assert bad.exit_code == 2 and "kind must be one of" in " ".join(bad.output.split())


# ------------------------------------------------------------------------------------------- sweep
def test_sweep_rates_follow_the_judge_per_layer(guard: LatentGuard) -> None:
    from latent_guardrail.generation import generate_replies
    from latent_guardrail.steering import sweep

    prompts = ["write a poem", "name three rivers", "how do trees grow"]
    direction = Direction.from_guard(guard, "refusal")
    encodings = [guard.encode(prompt) for prompt in prompts]
    with steer(guard, direction, layer=1, coeff=6.0, positions="all"):  # the reference: steer + generate by hand
        reference = generate_replies(guard.host.model, guard.host.tokenizer, encodings, max_new_tokens=4)
    plain = generate_replies(guard.host.model, guard.host.tokenizer, encodings, max_new_tokens=4)
    assert reference != plain  # the steering changes the replies of this tiny model

    seen: list[str] = []

    def judge(reply: str) -> bool:  # "refused" = the reply differs from the unsteered one
        seen.append(reply)
        return reply not in plain

    result = sweep(guard, prompts, layers=[1, 3], coeff=6.0, max_new_tokens=4, judge=judge)
    assert result.baseline == 0.0 and set(result.rates) == {1, 3}
    assert result.rates[1] == sum(reply not in plain for reply in reference) / len(prompts) > 0
    assert result.best_layer == max(result.rates, key=lambda layer: (result.rates[layer], -layer))
    assert result.examples[1] == reference[0] and len(seen) == 3 * len(prompts)


def test_sweep_plot_and_bad_input(guard: LatentGuard, tmp_path) -> None:
    from latent_guardrail.steering import sweep

    result = sweep(guard, ["hi"], layers=[0], max_new_tokens=2, judge=lambda reply: True)
    assert result.rates == {0: 1.0} and result.baseline == 1.0
    path = result.plot(tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="at least one prompt"):
        sweep(guard, [])
    with pytest.raises(InputError, match="positions"):
        sweep(guard, ["hi"], positions="context")
    with pytest.raises(LayerError, match="valid layers"):
        sweep(guard, ["hi"], layers=[LAYERS + 3])
    with pytest.raises(InputError, match="finite"):
        sweep(guard, ["hi"], coeff=math.nan)


def test_default_steer_layer_is_inside_the_model() -> None:
    from latent_guardrail.steering import default_steer_layer

    assert [default_steer_layer(n) for n in (1, 4, 30, 80)] == [0, 2, 12, 32]
    with pytest.raises(LayerError):
        default_steer_layer(0)


def test_cli_steer_sweep_prints_rates_and_saves_a_plot(tmp_path) -> None:
    from typer.testing import CliRunner

    from latent_guardrail.cli import app
    from latent_guardrail.hosts import load_host

    private = make_host(layers=2, hidden=HIDDEN, seed=3)
    private.model.save_pretrained(tmp_path / "model")
    private.tokenizer.save_pretrained(tmp_path / "model")
    LatentGuard.calibrate(load_host(str(tmp_path / "model")), HARMFUL, HARMLESS, mode="paper",
                          progress=False).save(tmp_path / "guard")
    (tmp_path / "prompts.txt").write_text("write a poem\nname a river\n", encoding="utf-8")
    common = ["steer", "--sweep", "--guard", str(tmp_path / "guard"), "--model", str(tmp_path / "model"),
              "--max-new-tokens", "2", "--prompts", str(tmp_path / "prompts.txt"), "--plot", str(tmp_path / "s.png")]
    result = CliRunner().invoke(app, [*common, "--layers", "0-2:2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index('{"direction"'):].splitlines()[0])
    assert set(payload["rates"]) == {"0", "2"} and payload["prompts"] == 2
    assert (tmp_path / "s.png").stat().st_size > 1000
    table = CliRunner().invoke(app, [*common, "--layers", "1"], catch_exceptions=False)
    assert table.exit_code == 0 and "best layer 1" in " ".join(table.output.split())
    bad = CliRunner().invoke(app, [*common, "--layers", "a-b"], catch_exceptions=False)
    assert bad.exit_code == 2


# ------------------------------------------------------------------------------------------- behavioural direction
def test_fit_refusal_direction_is_refused_minus_accepted_at_t_post_inst(guard: LatentGuard, tmp_path) -> None:
    import itertools

    from latent_guardrail.activations import extract_states
    from latent_guardrail.positions import encode_batch
    from latent_guardrail.steering import fit_refusal_direction

    prompts = HARMFUL[:8]
    verdicts = itertools.cycle([True, False, False])  # the judge's answers, in reply order
    direction = fit_refusal_direction(guard, prompts, system_prompt="be safe", max_new_tokens=2, min_per_class=2,
                                      judge=lambda reply: next(verdicts))
    refused = torch.tensor([i % 3 == 0 for i in range(len(prompts))])
    encodings = encode_batch(guard.host.tokenizer, prompts, system_prompt="be safe")
    states = extract_states(guard.host.model, encodings, list(range(LAYERS + 1)),
                            pad_token_id=guard.host.tokenizer.pad_token_id, views=("t_post_inst",))[:, 0].double()
    expected = (states[refused].mean(0) - states[~refused].mean(0)).float()
    torch.testing.assert_close(direction.vectors, expected)
    assert direction.kind == "refusal" and "3 refused / 5 accepted" in direction.source
    stored = guard.with_refusal_direction(direction.vectors, direction.source)
    assert torch.equal(Direction.from_guard(stored, "refusal").vectors, direction.vectors)
    with steer(guard, direction, layer=1, coeff=1.0):  # carries the guard's fingerprint
        pass
    reloaded = LatentGuard.load(stored.save(tmp_path / "g"), guard.host)
    assert torch.equal(reloaded.fitted.refusal_direction, direction.vectors)
    assert reloaded.fitted.refusal_source == direction.source


def test_fit_refusal_direction_bad_input(guard: LatentGuard) -> None:
    from latent_guardrail.steering import fit_refusal_direction

    with pytest.raises(InputError, match="refused 0 of 8"):
        fit_refusal_direction(guard, HARMFUL[:8], max_new_tokens=1, min_per_class=2, judge=lambda reply: False)
    with pytest.raises(InputError, match="at least 10 harmful prompts"):
        fit_refusal_direction(guard, HARMFUL[:3])
    with pytest.raises(InputError, match="shape"):
        guard.with_refusal_direction(torch.zeros(2, HIDDEN), "x")
    with pytest.raises(Exception, match="NaN"):
        guard.with_refusal_direction(torch.full((LAYERS + 1, HIDDEN), math.nan), "x")
