"""Determinism: the same text gets the same score alone, in a batch of any size and order, with left or right
padding, on one or two intra-op threads (|Δ| < 1e-5), and in bfloat16 within a stated tolerance.

Tolerances: float32 paths differ only by padding/batching rounding, |Δ score| < 1e-5. A bfloat16 copy of the
host (same weights rounded to bf16) against float32: |Δ score| <= 0.01 (BF16_TOLERANCE) on the tiny test
hosts; README gives the figure measured on the default host.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_guardrail.activations import run_capture
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.positions import PromptEncoding, pad_batch
from latent_guardrail.verdict import Verdict
from latent_guardrail.views import ViewLayout
from tests.support.models import HARMFUL, HARMLESS, make_host

EXACT = 1e-5
BF16_TOLERANCE = 0.01
MODES = ("paper", "tuned")
POOL: list[Any] = [
    "hi",
    *HARMFUL[:5],
    *HARMLESS[:5],
    "write a long story about a lighthouse keeper, the sea, the storms and the ships that pass by at night " * 2,
    "say <|im_end|> twice",
    [{"role": "user", "content": "hello!"}, {"role": "assistant", "content": "hi!"},   # no extra reading:
     {"role": "user", "content": HARMFUL[7]}],                                         # the whole prompt's states
    "naïve café 🙂 " + HARMLESS[8],
]


@pytest.fixture(scope="module")
def guards(tiny_host: Host) -> dict[str, LatentGuard]:
    return {mode: LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode=mode, progress=False) for mode in MODES}


@pytest.fixture(scope="module")
def alone(guards: dict[str, LatentGuard]) -> dict[str, list[Verdict]]:
    """Each pool prompt checked on its own (no padding)."""
    return {mode: [guard.check(prompt) for prompt in POOL] for mode, guard in guards.items()}


def padded_states(guard: LatentGuard, encodings: list[PromptEncoding], side: str) -> torch.Tensor:
    """States ``(n, views, layers, d)`` of one padded batch, padded on ``side`` (the guard itself pads left)."""
    batch = pad_batch(encodings, guard.host.tokenizer.pad_token_id, side=side)  # type: ignore[arg-type]
    layout = ViewLayout.of(guard.views)
    positions, spans = layout.locate(batch)
    with guard.host.lock:
        result = run_capture(guard.host.model, batch.input_ids, batch.attention_mask, guard.layers, positions,
                             layer_template=guard.fitted.layer_template, spans=spans)
    return result.stacked()[:, list(layout.order)]


@pytest.mark.parametrize("mode", MODES)
def test_repeated_checks_are_bit_identical(mode: str, guards: dict[str, LatentGuard],
                                           alone: dict[str, list[Verdict]]) -> None:
    guard = guards[mode]
    for _ in range(2):
        again = [guard.check(prompt) for prompt in POOL]
        assert [v.score for v in again] == [v.score for v in alone[mode]]
        assert [v.layer_scores for v in again] == [v.layer_scores for v in alone[mode]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_left_and_right_padding_give_the_same_scores(mode: str, side: str, guards: dict[str, LatentGuard],
                                                     alone: dict[str, list[Verdict]]) -> None:
    guard = guards[mode]
    encodings = [guard.encode(prompt) for prompt in POOL]
    assert len({len(e.input_ids) for e in encodings}) > 5  # real padding happens
    verdicts = guard.verdicts_from_states(encodings, padded_states(guard, encodings, side))
    for verdict, reference in zip(verdicts, alone[mode], strict=True):
        assert abs(verdict.score - reference.score) < EXACT
        for layer in guard.layers:
            assert abs(verdict.layer_scores[layer] - reference.layer_scores[layer]) < EXACT


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                     HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=12), batch_size=st.integers(1, 8),
       mode=st.sampled_from(MODES))
def test_any_batch_of_any_size_gives_the_scores_of_the_prompts_alone(
        picks: list[int], batch_size: int, mode: str, guards: dict[str, LatentGuard],
        alone: dict[str, list[Verdict]]) -> None:
    guard = guards[mode].with_settings(batch_size=batch_size)
    verdicts = guard.check_batch([POOL[i] for i in picks])
    for index, verdict in zip(picks, verdicts, strict=True):
        reference = alone[mode][index]
        assert abs(verdict.score - reference.score) < EXACT
        assert (verdict.t_inst, verdict.num_tokens) == (reference.t_inst, reference.num_tokens)
        assert verdict.harmful == reference.harmful or abs(reference.margin) < EXACT


@pytest.mark.parametrize("mode", MODES)
def test_intra_op_threads_do_not_change_the_scores(mode: str, guards: dict[str, LatentGuard],
                                                   alone: dict[str, list[Verdict]]) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        verdicts = guards[mode].check_batch(POOL)
    finally:
        torch.set_num_threads(before)
    for verdict, reference in zip(verdicts, alone[mode], strict=True):
        assert abs(verdict.score - reference.score) < EXACT


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_host_scores_within_the_stated_tolerance(mode: str, guards: dict[str, LatentGuard],
                                                          alone: dict[str, list[Verdict]]) -> None:
    bf16 = make_host("chatml", dtype=torch.bfloat16)  # the same seed: the tiny host's weights rounded to bf16
    assert bf16.model.dtype == torch.bfloat16
    guard = LatentGuard(bf16, guards[mode].fitted)  # same fingerprint: dtype is not part of the identity
    verdicts = guard.check_batch(POOL)
    deltas = [abs(v.score - r.score) for v, r in zip(verdicts, alone[mode], strict=True)]
    assert max(deltas) <= BF16_TOLERANCE
    assert max(deltas) > 0  # it really ran in bfloat16
    for verdict, reference in zip(verdicts, alone[mode], strict=True):
        assert verdict.status == "ok"
        assert verdict.harmful == reference.harmful or abs(reference.margin) <= BF16_TOLERANCE
