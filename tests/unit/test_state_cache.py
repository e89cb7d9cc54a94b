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
from safetensors.torch import save_file

from latent_guardrail import state_cache
from latent_guardrail.activations import extract_end_states
from latent_guardrail.hosts import Host
from latent_guardrail.positions import encode_batch
from latent_guardrail.settings import GuardSettings
from latent_guardrail.state_cache import StateCache, StateCacheWarning, cached_end_states, encoding_identity, state_key
from tests.support.models import HARMFUL, HARMLESS, make_host
from tests.support.tokenizers import make_tokenizer

ENCODING = encode_batch(make_tokenizer("chatml"), ["one clause"], system_prompt=None, max_tokens=None)[0]

LAYERS = (1, 2, 3)


def _encoder(host: Host, system_prompt: str | None = None):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def encode(prompts):  # type: ignore[no-untyped-def]
        calls.append(len(prompts))
        return encode_batch(host.tokenizer, list(prompts), system_prompt=system_prompt, max_tokens=None)

    encode.calls = calls  # type: ignore[attr-defined]
    return encode


def _read(host: Host, prompts: list[str], cache: StateCache | None, encode=None):  # type: ignore[no-untyped-def]
    return cached_end_states(host.model, prompts, LAYERS, encode=encode or _encoder(host), cache=cache,
                             identity="id", pad_token_id=host.tokenizer.pad_token_id, batch_size=4, max_ends=32)


def _fresh(host: Host, prompts: list[str]):  # type: ignore[no-untyped-def]
    return extract_end_states(host.model, _encoder(host)(prompts), LAYERS, pad_token_id=host.tokenizer.pad_token_id,
                              batch_size=4, max_ends=32)


def test_keys_change_with_everything_that_decides_the_states() -> None:
    key = state_key("id", None, LAYERS, "clause_ends", 32, "how do I bake bread")
    assert key == state_key("id", None, list(LAYERS), "clause_ends", 32, "how do I bake bread")
    others = {state_key("id2", None, LAYERS, "clause_ends", 32, "how do I bake bread"),
              state_key("id", "model.layers.{num}", LAYERS, "clause_ends", 32, "how do I bake bread"),
              state_key("id", None, (1, 2), "clause_ends", 32, "how do I bake bread"),
              state_key("id", None, LAYERS, "t_inst", 32, "how do I bake bread"),
              state_key("id", None, LAYERS, "clause_ends", 8, "how do I bake bread"),
              state_key("id", None, LAYERS, "clause_ends", 32, "how do I bake bread."),
              state_key("id", None, LAYERS, "clause_ends", 32, [{"role": "user", "content": "how do I bake bread"}])}
    assert key not in others and len(others) == 7
    base = GuardSettings()
    same = {encoding_identity("fp", base), encoding_identity("fp", base.model_copy(update={
        "threshold": 2.0, "category_thresholds": {"x": 1.0}, "category_policy": {"x": "allow"}, "batch_size": 3}))}
    same |= {encoding_identity("fp", base.model_copy(update={"typed_turns": False, "segments": True}))}
    assert len(same) == 1             # decision-only settings and extra readings do not change the states
    assert len({encoding_identity("fp", base), encoding_identity("fp2", base),
                encoding_identity("fp", base.model_copy(update={"system_prompt": "Be safe."})),
                encoding_identity("fp", base.model_copy(update={"case_fold": True}))}) == 4
    with pytest.raises(ValueError, match="64 lower-case hex"):
        StateCache("unused").path("../../etc/passwd")


def test_miss_then_hit_gives_the_same_states_without_a_forward_pass(tiny_host: Host, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [*HARMFUL[:5], "First sentence. Second one? Third!"]
    fresh = _fresh(tiny_host, prompts)
    cache = StateCache(tmp_path)
    first = _read(tiny_host, prompts, cache)
    assert (cache.stats.hits, cache.stats.misses) == (0, len(prompts)) and len(cache.entries()) == len(prompts)
    torch.testing.assert_close(first[0], fresh[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(first[1], fresh[1]) and torch.equal(first[2], fresh[2])
    assert first[3] == _encoder(tiny_host)(prompts)

    def no_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a full hit must not run the model")

    monkeypatch.setattr(state_cache, "extract_end_states", no_forward)
    again = StateCache(tmp_path)
    encode = _encoder(tiny_host)
    second = _read(tiny_host, prompts, again, encode)
    assert (again.stats.hits, again.stats.misses) == (len(prompts), 0)
    assert all(torch.equal(x, y) for x, y in zip(first[:3], second[:3], strict=True)) and second[3] == first[3]
    assert sum(encode.calls) <= 8                             # only the check sample was encoded


def test_a_partial_hit_reads_only_the_missing_prompts(tiny_host: Host, tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _read(tiny_host, HARMLESS[:4], cache)
    mixed = [HARMLESS[0], HARMFUL[0], HARMLESS[1], HARMFUL[1]]
    states, prompt, _, _ = _read(tiny_host, mixed, cache)
    assert (cache.stats.hits, cache.stats.misses) == (2, 6)
    assert prompt.tolist() == sorted(prompt.tolist()) and set(prompt.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(states, _fresh(tiny_host, mixed)[0], atol=1e-5, rtol=1e-5)


def test_a_changed_encoding_is_caught_and_read_again(tiny_host: Host, tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    _read(tiny_host, HARMFUL[:4], cache)
    changed = _encoder(tiny_host, system_prompt="You are careful.")     # as if the encoding code had changed
    again = StateCache(tmp_path)
    with pytest.warns(StateCacheWarning, match="encoding changed"):
        states, _, _, encodings = _read(tiny_host, HARMFUL[:4], again, changed)
    assert again.stats.misses == 4 and encodings == changed(HARMFUL[:4])
    want = extract_end_states(tiny_host.model, encodings, LAYERS, pad_token_id=tiny_host.tokenizer.pad_token_id,
                              batch_size=4, max_ends=32)[0]
    torch.testing.assert_close(states, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key", "wrong_shape", "not_finite"])
def test_a_corrupt_entry_is_recomputed_with_a_warning(tiny_host: Host, tmp_path: Path, damage: str) -> None:
    prompts = HARMFUL[:3]
    cache = StateCache(tmp_path)
    good = _read(tiny_host, prompts, cache)[0]
    key = state_key("id", None, LAYERS, "clause_ends", 32, prompts[1])
    path = cache.path(key)
    if damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-50])
    elif damage == "wrong_key":
        shutil.copyfile(cache.path(state_key("id", None, LAYERS, "clause_ends", 32, prompts[0])), path)
    elif damage == "wrong_shape":
        StateCache(tmp_path).put(key, torch.zeros(7, len(LAYERS), 4), _encoder(tiny_host)([prompts[1]])[0])
    else:                                              # written around put(), which refuses NaN
        stored = cache.get(key)
        assert stored is not None
        bad = stored[0].clone()
        bad[0, 0, 0] = float("nan")
        save_file({"states": bad}, str(path), metadata={"key": key, "format": state_cache.FORMAT,
                                                        "encoding": stored[1].model_dump_json()})
    again = StateCache(tmp_path)
    with pytest.warns(StateCacheWarning, match="corrupt"):
        states = _read(tiny_host, prompts, again)[0]
    assert again.stats.corrupt == 1 and again.stats.misses == 1
    torch.testing.assert_close(states, good, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the rewritten entry is whole again
        _read(tiny_host, prompts, StateCache(tmp_path))


def test_failures_are_never_cached(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    with pytest.raises(ValueError, match="NaN or inf"):
        cache.put("a" * 64, torch.tensor([[[float("nan")]]]), ENCODING)
    assert cache.entries() == []


def test_the_size_bound_drops_the_least_recently_used(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, max_bytes=10**9)
    keys = [f"{i:064x}" for i in range(6)]
    for i, key in enumerate(keys):
        cache.put(key, torch.full((1, 3, 64), float(i)), ENCODING)
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
                cache.put(shared, torch.full((1, 2, 256), float(k)), ENCODING)
                got = cache.get(shared, layers=2)
                bad += got is None or not bool((got[0] == k).all()) or got[1] != ENCODING
            own = f"{worker + 1:02x}{r:062x}"
            cache.put(own, torch.full((1, 2, 256), float(worker)), ENCODING)
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
            got = cache.get(f"{k:064x}", layers=2)
            assert got is not None and bool((got[0] == k).all())


FAMILIES = ["chatml", "llama3", "gemma", "mistral", "llama2", "qwen2"]


def _tokens_run(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    seen: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    return seen, handle


@pytest.mark.parametrize("family", FAMILIES)
def test_reading_the_shared_prefix_once_gives_the_plain_states(family: str) -> None:
    host = make_host(family)
    prompts = [*HARMFUL[:5], *HARMLESS[:4], "First sentence. Second one? Third!"]
    encodings = encode_batch(host.tokenizer, prompts, system_prompt="You are a careful assistant. Be brief.",
                             max_tokens=None)
    kwargs = {"pad_token_id": host.tokenizer.pad_token_id, "batch_size": 4, "max_ends": 32}
    seen, handle = _tokens_run(host.model)
    try:
        want = extract_end_states(host.model, encodings, LAYERS, **kwargs)
        plain = sum(seen)
        seen.clear()
        got = state_cache.read_end_states(host.model, encodings, LAYERS, **kwargs)
    finally:
        handle.remove()
    assert state_cache._prefix_works[host.model]                # checked on two prompts, then used
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert sum(seen) < plain                                     # fewer tokens went through the model


def test_a_model_whose_cache_differs_is_read_by_plain_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    host = make_host("chatml", seed=3)
    encodings = encode_batch(host.tokenizer, HARMFUL[:6], system_prompt="Be careful.", max_tokens=None)
    kwargs = {"pad_token_id": host.tokenizer.pad_token_id, "batch_size": 4, "max_ends": 32}
    real = state_cache._read_after_prefix

    def off(*args, **kw):  # type: ignore[no-untyped-def]
        return [s + 1.0 for s in real(*args, **kw)]                # as if the KV cache changed the states

    monkeypatch.setattr(state_cache, "_read_after_prefix", off)
    got = state_cache.read_end_states(host.model, encodings, LAYERS, **kwargs)
    assert state_cache._prefix_works[host.model] is False
    assert all(torch.equal(x, y) for x, y in zip(got, extract_end_states(host.model, encodings, LAYERS, **kwargs),
                                                 strict=True))
    few = encode_batch(host.tokenizer, ["hi", "yo"], system_prompt=None, max_tokens=None)
    assert state_cache._shared_prefix(few, [[0], [1]]) <= 1      # an end at the start leaves no prefix to share


def test_full_runs_of_prompts_are_read_back_as_one_bundle(tiny_host: Host, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_cache, "_BUNDLE", 4)
    prompts = [*HARMFUL[:5], *HARMLESS[:4]]                      # two full runs of 4, one prompt left over
    cache = StateCache(tmp_path)
    first = _read(tiny_host, prompts, cache)
    runs = [[state_key("id", None, LAYERS, "clause_ends", 32, p) for p in prompts[k:k + 4]] for k in (0, 4)]
    assert all(cache.bundle_path(run).is_file() for run in runs)
    assert len(cache.entries()) == len(prompts) + 2               # bundles count towards the size bound
    for run in runs:                                              # the runs' own entries are no longer needed
        for key in run:
            cache.path(key).unlink()
    monkeypatch.setattr(state_cache, "extract_end_states", lambda *a, **k: pytest.fail("no forward pass"))
    monkeypatch.setattr(state_cache, "read_end_states", lambda *a, **k: pytest.fail("no forward pass"))
    again = StateCache(tmp_path)
    second = _read(tiny_host, prompts, again)
    assert (again.stats.hits, again.stats.misses) == (len(prompts), 0)
    assert all(torch.equal(x, y) for x, y in zip(first[:3], second[:3], strict=True)) and second[3] == first[3]
    damaged = cache.bundle_path(runs[1])
    damaged.write_bytes(damaged.read_bytes()[:-64])
    with pytest.warns(StateCacheWarning, match="corrupt"):
        assert StateCache(tmp_path).get_bundle(runs[1]) is None
    assert not damaged.exists() and StateCache(tmp_path).get_bundle(runs[0]) is not None
