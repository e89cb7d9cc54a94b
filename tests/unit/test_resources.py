"""Resource bounds: input length limits with defined verdicts, and no growing caches over many checks.

The memory curve over 10,000 checks is printed by ``benchmarks/bench_memory.py``; this test is its fast guard:
60 checks of distinct texts must not add live tensors, gc-tracked objects or traced Python memory beyond
allocator noise. The detector is shown to catch a deliberately leaky cache (so the test could fail).
"""

from __future__ import annotations

import gc
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from latent_guardrail.errors import InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from tests.support.models import HARMFUL, HARMLESS

CHECKS = 60
MAX_NEW_OBJECTS = 30          # a per-check cache adds at least one object per check (here: 60+)
MAX_NEW_BYTES = 64 * 1024     # about 1 KB per check; a verdict cache adds more than 2 KB per check


@pytest.fixture(scope="module")
def guard(tiny_host: Host) -> LatentGuard:
    return LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False)


def live_tensors() -> int:
    with warnings.catch_warnings():  # isinstance() on some lazily deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def growth(check: Callable[[str], Any], checks: int = CHECKS) -> tuple[int, int, int]:
    """(new live tensors, new gc-tracked objects, new traced bytes) after ``checks`` checks of distinct texts."""
    for i in range(10):  # warm-up: one-off caches (compiled templates, regexes) fill here
        check(f"warm-up prompt number {i}")
    gc.collect()
    tensors, objects = live_tensors(), len(gc.get_objects())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(checks):
            check(f"how do I bake bread, attempt number {i}")
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return live_tensors() - tensors, len(gc.get_objects()) - objects, traced


def test_many_checks_leave_no_growing_cache(guard: LatentGuard) -> None:
    new_tensors, new_objects, new_bytes = growth(guard.check)
    assert new_tensors <= 0
    assert new_objects < MAX_NEW_OBJECTS
    assert new_bytes < MAX_NEW_BYTES


def test_the_detector_catches_a_growing_cache(guard: LatentGuard) -> None:
    """A cache of verdicts and one of states, each keyed by text: both show up."""
    verdicts: dict[str, Any] = {}
    states: dict[str, Any] = {}

    def leaky(text: str) -> Any:
        encoding = guard.encode(text)
        states[text] = guard.states([encoding])
        verdicts[text] = guard.verdicts_from_states([encoding], states[text])[0]
        return verdicts[text]

    new_tensors, new_objects, new_bytes = growth(leaky)
    # one tensor kept per check; other tests' objects freed meanwhile (idle worker threads, caches) can offset a
    # few of them, so ask for half — still far above the clean check's bound of 0
    assert new_tensors >= CHECKS // 2
    assert new_objects >= MAX_NEW_OBJECTS and new_bytes >= MAX_NEW_BYTES


def test_characters_beyond_max_chars_never_reach_the_tokenizer(guard: LatentGuard,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-megabyte message costs a slice, not a tokenization of megabytes."""
    seen: list[int] = []
    tokenizer = guard.host.tokenizer
    original = type(tokenizer).__call__

    def spy(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(text) if isinstance(text, str) else 0)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", spy)
    small = guard.with_settings(max_chars=2_000)
    verdict = small.check("lorem ipsum dolor sit amet " * 200_000 + HARMFUL[0])  # 5.4 million characters
    assert verdict.status == "ok" and verdict.truncated
    assert seen and max(seen) < 2_000 + 500  # the kept text plus the template


def test_earlier_turns_that_cannot_fit_are_a_typed_error(guard: LatentGuard) -> None:
    """max_chars bounds the last user message; history that alone overflows max_tokens is an InputError."""
    history = [{"role": "user", "content": "tell me more. " * 400}, {"role": "assistant", "content": "ok"},
               {"role": "user", "content": HARMFUL[0]}]
    with pytest.raises(InputError, match="raise max_tokens"):
        guard.check(history)


@pytest.mark.parametrize(("field", "value"), [("max_chars", 0), ("max_chars", 10_000_001), ("max_tokens", 15),
                                              ("max_tokens", 1_000_001), ("batch_size", 0), ("batch_size", 5000)])
def test_limits_are_bounded_settings(field: str, value: int, guard: LatentGuard) -> None:
    with pytest.raises(ValueError):
        guard.with_settings(**{field: value})
