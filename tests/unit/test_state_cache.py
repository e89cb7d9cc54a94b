"""The state cache: keys, hit, miss, corrupt entry → recomputed with a warning, concurrent writers, size bound."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from latent_guardrail import state_cache
from latent_guardrail.activations import extract_end_states
from latent_guardrail.hosts import Host
from latent_guardrail.positions import encode_batch
from latent_guardrail.state_cache import StateCache, StateCacheWarning, cached_end_states, state_key
from tests.support.models import HARMFUL, HARMLESS

LAYERS = (1, 2, 3)


def _encodings(host: Host, texts: list[str]):  # type: ignore[no-untyped-def]
    return encode_batch(host.tokenizer, texts, system_prompt=None, max_tokens=None)


def _read(host: Host, encodings, cache: StateCache | None):  # type: ignore[no-untyped-def]
    return cached_end_states(host.model, encodings, LAYERS, cache=cache, fingerprint="fp",
                             pad_token_id=host.tokenizer.pad_token_id, batch_size=4, max_ends=32)


def test_keys_change_with_everything_that_decides_the_states(tiny_host: Host) -> None:
    a, b = _encodings(tiny_host, ["how do I bake bread", "how do I bake bread."])
    key = state_key("fp", None, LAYERS, "clause_ends", 32, a)
    assert key == state_key("fp", None, list(LAYERS), "clause_ends", 32, a)
    others = {state_key("fp2", None, LAYERS, "clause_ends", 32, a), state_key("fp", "model.layers.{num}", LAYERS,
              "clause_ends", 32, a), state_key("fp", None, (1, 2), "clause_ends", 32, a),
              state_key("fp", None, LAYERS, "t_inst", 32, a), state_key("fp", None, LAYERS, "clause_ends", 8, a),
              state_key("fp", None, LAYERS, "clause_ends", 32, b)}
    assert key not in others and len(others) == 6
    with pytest.raises(ValueError, match="64 lower-case hex"):
        StateCache("unused").path("../../etc/passwd")


def test_miss_then_hit_gives_the_same_states_without_a_forward_pass(tiny_host: Host, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = _encodings(tiny_host, [*HARMFUL[:5], "First sentence. Second one? Third!"])
    fresh = extract_end_states(tiny_host.model, encodings, LAYERS, pad_token_id=tiny_host.tokenizer.pad_token_id,
                               batch_size=4, max_ends=32)
    cache = StateCache(tmp_path)
    first = _read(tiny_host, encodings, cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, len(encodings)) and len(cache.entries()) == len(encodings)
    for got, want in zip(first, fresh, strict=True):
        assert got.shape == want.shape
    torch.testing.assert_close(first[0], fresh[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(first[1], fresh[1]) and torch.equal(first[2], fresh[2])

    def no_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a full hit must not run the model")

    monkeypatch.setattr(state_cache, "extract_end_states", no_forward)
    again = StateCache(tmp_path)
    second = _read(tiny_host, encodings, again)
    assert (again.stats.hits, again.stats.misses) == (len(encodings), 0)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_a_partial_hit_reads_only_the_missing_prompts(tiny_host: Host, tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _read(tiny_host, _encodings(tiny_host, HARMLESS[:4]), cache)
    mixed = _encodings(tiny_host, [HARMLESS[0], HARMFUL[0], HARMLESS[1], HARMFUL[1]])
    states, prompt, _ = _read(tiny_host, mixed, cache)
    assert (cache.stats.hits, cache.stats.misses) == (2, 6)
    assert prompt.tolist() == sorted(prompt.tolist()) and set(prompt.tolist()) == {0, 1, 2, 3}
    fresh = extract_end_states(tiny_host.model, mixed, LAYERS, pad_token_id=tiny_host.tokenizer.pad_token_id,
                               batch_size=4, max_ends=32)[0]
    torch.testing.assert_close(states, fresh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key", "wrong_shape"])
def test_a_corrupt_entry_is_recomputed_with_a_warning(tiny_host: Host, tmp_path: Path, damage: str) -> None:
    encodings = _encodings(tiny_host, HARMFUL[:3])
    cache = StateCache(tmp_path)
    good = _read(tiny_host, encodings, cache)[0]
    key = state_key("fp", None, LAYERS, "clause_ends", 32, encodings[1])
    path = cache.path(key)
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "wrong_key":
        shutil.copyfile(cache.path(state_key("fp", None, LAYERS, "clause_ends", 32, encodings[0])), path)
    else:
        StateCache(tmp_path).put(key, torch.zeros(7, len(LAYERS), 4))
    again = StateCache(tmp_path)
    with pytest.warns(StateCacheWarning, match="corrupt"):
        states = _read(tiny_host, encodings, again)[0]
    assert again.stats.corrupt == 1 and again.stats.misses == 1
    torch.testing.assert_close(states, good, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the rewritten entry is whole again
        _read(tiny_host, encodings, StateCache(tmp_path))


def test_failures_are_never_cached(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.put("a" * 64, torch.tensor([[[float("nan")]]]))
    assert cache.entries() == []


def test_the_size_bound_drops_the_least_recently_used(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, max_bytes=10**9)
    keys = [f"{i:064x}" for i in range(6)]
    for i, key in enumerate(keys):
        cache.put(key, torch.full((4, 3, 64), float(i)))
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))
    one = cache.path(keys[0]).stat().st_size
    assert cache.get(keys[0]) is not None                  # a hit makes it the most recently used
    cache.max_bytes = 3 * one
    assert cache.prune() == 3
    assert {p.stem for p in cache.entries()} == {keys[0], keys[4], keys[5]}
    assert cache.size() <= cache.max_bytes and cache.stats.evicted == 3
    with pytest.raises(ValueError, match="positive"):
        StateCache(tmp_path, max_bytes=0)


def _writer(root: str, worker: int, rounds: int) -> tuple[int, int]:
    """Writes shared keys (same states from every worker) and keys of its own, reading back as it goes."""
    cache = StateCache(root)
    bad = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in range(rounds):
            for k in range(8):
                shared = f"{k:064x}"
                cache.put(shared, torch.full((3, 2, 256), float(k)))
                got = cache.get(shared, width=3, layers=2)
                bad += got is None or not bool((got == k).all())
            own = f"{worker + 1:02x}{r:062x}"
            cache.put(own, torch.full((2, 2, 256), float(worker)))
    return bad, len(caught)


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_writers_leave_whole_entries(tmp_path: Path, kind: str) -> None:
    workers, rounds = 4, 6
    if kind == "threads":
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda w: _writer(str(tmp_path), w, rounds), range(workers)))
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.starmap(_writer, [(str(tmp_path), w, rounds) for w in range(workers)])
    assert results == [(0, 0)] * workers          # every read saw a whole entry, no corrupt warnings
    cache = StateCache(tmp_path)
    assert len(cache.entries()) == 8 + workers * rounds
    assert not list(tmp_path.glob("*/.*.tmp"))     # no temporary file left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(8):
            got = cache.get(f"{k:064x}", width=3, layers=2)
            assert got is not None and bool((got == k).all())
