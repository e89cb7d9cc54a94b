"""Hosts placed by accelerate: offloaded to CPU memory / disk, mixed dtypes, bad device maps, batch sizes.

A CPU-only machine has one compute device, so a "split" host here is one whose modules accelerate offloads
(weights on ``meta``, loaded from a CPU copy or from disk by a hook for each forward pass) — the same
hooks and execution-device bookkeeping that spread a host over GPUs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from typer.testing import CliRunner

from latent_guardrail.activations import extract_states
from latent_guardrail.batch_size import auto_batch_size, resolve_batch_size
from latent_guardrail.calibration import calibrate
from latent_guardrail.cli import app
from latent_guardrail.errors import HostError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host, load_host
from latent_guardrail.layers import decoder_blocks, input_device
from latent_guardrail.placement import check_device, check_device_map, describe_placement, execution_device
from latent_guardrail.positions import encode_batch
from latent_guardrail.settings import CalibrationSettings
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS, make_host

LAYERS = 4
SPLIT = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
         "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
PROMPTS = HARMFUL[:6] + HARMLESS[:6]


@pytest.fixture(scope="module")
def plain() -> Host:
    return make_host(layers=LAYERS, seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("placement") / "model"
    host = make_host(layers=LAYERS, seed=3)
    host.model.save_pretrained(folder)
    host.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def guard(saved: Path) -> LatentGuard:
    """A paper-mode guard fitted on the saved host loaded plainly (all weights in memory)."""
    host = load_host(saved)
    return LatentGuard(host, calibrate(host, HARMFUL, HARMLESS, settings=CalibrationSettings(mode="paper"),
                                       progress=False))


def _reference(host: Host, layers: list[int]) -> torch.Tensor:
    encodings = encode_batch(host.tokenizer, PROMPTS)
    return extract_states(host.model, encodings, layers, pad_token_id=host.tokenizer.pad_token_id,
                          views=("t_inst", "content_mean"), batch_size=4)


# ---------------------------------------------------------------------------------------------- offloading
def test_disk_and_cpu_offloaded_host_reads_exactly_the_plain_states(plain: Host, tmp_path: Path) -> None:
    host = make_host(layers=LAYERS, seed=3)
    model = dispatch_model(host.model, device_map=SPLIT, offload_dir=str(tmp_path))
    offloaded = [p.block for p in describe_placement(decoder_blocks(model)) if p.offloaded]
    assert offloaded == [1, 3] and model.get_input_embeddings().weight.device.type == "meta"
    assert input_device(model) == torch.device("cpu")  # the embeddings' execution device, not meta
    before = hook_ids(model)
    for layers in ([0, 1, 2, 3, 4], [1, 2]):  # all layers, and early exit after an offloaded block
        encodings = encode_batch(host.tokenizer, PROMPTS)
        states = extract_states(model, encodings, layers, pad_token_id=host.tokenizer.pad_token_id,
                                views=("t_inst", "content_mean"), batch_size=4)
        assert states.dtype == torch.float32 and states.device.type == "cpu"
        assert torch.equal(states, _reference(plain, layers))
    assert hook_ids(model) == before
    assert all(p.device.type == "meta" for p in decoder_blocks(model)[3].parameters())  # offloaded again


def test_cpu_offload_hook_on_the_whole_model_reads_the_same_states(plain: Host) -> None:
    host = make_host(layers=LAYERS, seed=3)
    model = cpu_offload(host.model, execution_device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "meta"
    assert execution_device(model) == torch.device("cpu")
    encodings = encode_batch(host.tokenizer, PROMPTS)
    states = extract_states(model, encodings, [0, 2, 4], pad_token_id=host.tokenizer.pad_token_id,
                            views=("t_inst", "content_mean"), batch_size=4)
    assert torch.equal(states, _reference(plain, [0, 2, 4]))


def test_load_host_with_a_device_map_checks_like_the_plain_host(saved: Path, guard: LatentGuard,
                                                                 tmp_path: Path) -> None:
    host = load_host(saved, device_map=SPLIT, offload_folder=tmp_path / "offload")
    assert [p.offloaded for p in describe_placement(decoder_blocks(host.model))] == [False, True, False, True]
    assert host.device == torch.device("cpu")
    # the fingerprint reads the offloaded embeddings' stored values: the guard accepts this host
    assert host.fingerprint_parts(None) == guard.host.fingerprint_parts(None)
    spread = LatentGuard(host, guard.fitted).check_batch(PROMPTS)
    local = guard.check_batch(PROMPTS)
    assert [v.status for v in spread] == ["ok"] * len(PROMPTS)
    assert [v.score for v in spread] == [v.score for v in local]


@pytest.mark.parametrize("cpu_bytes", [30_000, 120_000])  # all on disk / embeddings in memory, the rest on disk
def test_device_map_auto_with_a_memory_cap_offloads_and_checks_the_same(saved: Path, guard: LatentGuard,
                                                                         tmp_path: Path, cpu_bytes: int) -> None:
    host = load_host(saved, device_map="auto", max_memory={"cpu": cpu_bytes}, offload_folder=tmp_path / "offload")
    assert "disk" in host.model.hf_device_map.values()
    assert all(p.offloaded for p in describe_placement(decoder_blocks(host.model)))
    spread = LatentGuard(host, guard.fitted).check_batch(PROMPTS)
    assert [v.score for v in spread] == [v.score for v in guard.check_batch(PROMPTS)]


def test_weights_on_meta_without_a_hook_fail_with_a_clear_error() -> None:
    host = make_host(layers=2)
    host.model.to("meta")
    with pytest.raises(HostError, match="meta device and no accelerate hook"):
        input_device(host.model)
    with pytest.raises(HostError, match="meta device"):
        host.fingerprint_parts(None)


# ---------------------------------------------------------------------------------------------- mixed dtypes
@pytest.fixture()
def mixed(saved: Path) -> Iterator[Host]:
    """The saved host with block 1 in bfloat16; hooks cast its inputs in and its output back out, as a host
    whose layers were stored in different dtypes runs (the test's hooks are removed afterwards)."""
    host = load_host(saved)
    block = decoder_blocks(host.model)[1].to(torch.bfloat16)

    def cast(value: Any, dtype: torch.dtype) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, tuple):
            return tuple(cast(item, dtype) for item in value)
        return value

    def cast_in(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return cast(args, torch.bfloat16), {key: cast(value, torch.bfloat16) for key, value in kwargs.items()}

    handles = [block.register_forward_pre_hook(cast_in, with_kwargs=True),
               block.register_forward_hook(lambda _m, _a, output: cast(output, torch.float32))]
    try:
        yield host
    finally:
        for handle in handles:
            handle.remove()


def test_mixed_dtype_layers_are_read_in_float32_and_scored(mixed: Host, guard: LatentGuard) -> None:
    dtypes = [p.dtypes for p in describe_placement(decoder_blocks(mixed.model))]
    assert dtypes[1] == (torch.bfloat16,) and dtypes[0] == dtypes[2] == (torch.float32,)
    layers = [0, 1, 2, 4]
    encodings = encode_batch(mixed.tokenizer, PROMPTS)
    seen: list[torch.dtype] = []
    probe = decoder_blocks(mixed.model)[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    try:
        states = extract_states(mixed.model, encodings, layers, pad_token_id=mixed.tokenizer.pad_token_id,
                                views=("t_inst", "content_mean"), batch_size=4)
    finally:
        probe.remove()
    assert seen and set(seen) == {torch.bfloat16}  # block 1 really received bfloat16 states
    reference = _reference(guard.host, layers)
    assert states.dtype == torch.float32
    assert torch.equal(states[:, :, 0], reference[:, :, 0])                        # before the bf16 block
    error = (states - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05                                                         # bf16 rounding, no more
    verdicts = LatentGuard(mixed, guard.fitted).check_batch(PROMPTS)
    assert all(v.status == "ok" for v in verdicts)
    assert [v.harmful for v in verdicts] == [v.harmful for v in guard.check_batch(PROMPTS)]


# ---------------------------------------------------------------------------------------------- bad devices
@pytest.mark.parametrize("device_map", [
    {"model.embed_tokens": "cpu", "model.layers": "cuda:97", "model.norm": "cpu", "lm_head": "cpu"},
    {"model.embed_tokens": 97, "model": "cpu"},
    "cuda:97",
    {"model": "npu:0"},
])
def test_device_map_naming_a_missing_device_is_refused_before_loading(saved: Path, device_map: Any) -> None:
    with pytest.raises(HostError, match=r"does not exist on this machine|is not a device name") as info:
        load_host(saved, device_map=device_map)
    assert "cpu" in str(info.value)  # it lists the devices this machine has


@pytest.mark.parametrize(("device_map", "match"), [
    ("fastest", "is not a device name"), ({}, "non-empty"), ({"model": "meta"}, "meta device holds no weights"),
    ({"model": True}, "device name"),
])
def test_malformed_device_maps_are_refused(device_map: Any, match: str) -> None:
    with pytest.raises(HostError, match=match):
        check_device_map(device_map)


def test_a_missing_device_is_refused(saved: Path) -> None:
    with pytest.raises(HostError, match="does not exist"):
        load_host(saved, device="cuda:97")
    assert check_device("cpu") == torch.device("cpu")
    assert check_device_map("auto") == "auto"
    assert check_device_map({"model": "cpu", "lm_head": "disk"}) == {"model": "cpu", "lm_head": "disk"}


# ---------------------------------------------------------------------------------------------- batch sizes
def test_auto_batch_size_on_cpu_is_a_bounded_token_budget(plain: Host) -> None:
    lengths = [10, 50, 100] * 20
    assert auto_batch_size(plain.model, lengths, [0, 4]) == 20                          # 2048 // 100
    assert auto_batch_size(plain.model, lengths, [0, 4], cpu_token_budget=250) == 2
    assert auto_batch_size(plain.model, lengths, [0, 4], extra_tokens=412) == 4         # 2048 // 512
    assert auto_batch_size(plain.model, lengths[:3], [0, 4]) == 3                        # never above n
    assert auto_batch_size(plain.model, [5000], [0, 4]) == 1


def _out_of_memory_above(host: Host, limit: int) -> torch.utils.hooks.RemovableHandle:
    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        if args[0].shape[0] > limit:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes")
    return decoder_blocks(host.model)[0].register_forward_pre_hook(hook)


def test_auto_batch_size_probe_halves_until_the_longest_batch_fits(plain: Host) -> None:
    lengths = list(range(8, 48))
    before = hook_ids(plain.model)
    handle = _out_of_memory_above(plain, 5)
    try:
        assert auto_batch_size(plain.model, lengths, [0, 2], cap=16, probe=True) == 4   # 16, 8 fail; 4 fits
        assert auto_batch_size(plain.model, lengths, [0, 2], cap=5, probe=True) == 5
    finally:
        handle.remove()
    assert hook_ids(plain.model) == before                                              # the probe's hooks are gone


def test_auto_batch_size_probe_names_the_fix_when_nothing_fits(plain: Host) -> None:
    handle = _out_of_memory_above(plain, 0)
    try:
        with pytest.raises(HostError, match="not even one prompt of 47 tokens"):
            auto_batch_size(plain.model, list(range(8, 48)), [0, 2], cap=2, probe=True)
    finally:
        handle.remove()


def test_resolve_batch_size_reads_integers_and_auto(plain: Host) -> None:
    assert resolve_batch_size("8", plain, PROMPTS) == 8
    chosen = resolve_batch_size("auto", plain, PROMPTS)
    assert 1 <= chosen <= len(PROMPTS)
    for bad in ("0", "-3", "many", "2.5"):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            resolve_batch_size(bad, plain, PROMPTS)


# ---------------------------------------------------------------------------------------------- the command
def test_cli_calibrates_an_offloaded_host_with_an_auto_batch_size(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "h.txt").write_text("\n".join(HARMFUL), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(HARMLESS), encoding="utf-8")
    base = ["calibrate", "--model", str(saved), "--harmful", str(tmp_path / "h.txt"), "--harmless",
            str(tmp_path / "b.txt"), "--mode", "paper"]
    result = CliRunner().invoke(app, [*base, "--batch-size", "auto", "--device-map", json.dumps(SPLIT),
                                      "--offload-folder", str(tmp_path / "offload"), "-o", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "g" / "guard.json").read_text())["settings"]["batch_size"] == 20  # all prompts
    bad = CliRunner().invoke(app, [*base, "--device-map", '{"model": "cuda:97"}', "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "does not exist on this machine" in " ".join(bad.output.split())
    assert not (tmp_path / "bad").exists()
