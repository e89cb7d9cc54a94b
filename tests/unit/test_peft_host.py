"""A PEFT (LoRA) model as a host: hooks reach its decoder blocks, it reads the same states as its merged copy, its
fingerprint is the merged copy's (weight drift against the base), and an adapter folder loads as a host."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from latent_guardrail.activations import extract_states
from latent_guardrail.errors import WeightDriftError
from latent_guardrail.fingerprint import WEIGHTS_PART, effective_weights
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host, load_host
from latent_guardrail.layers import decoder_blocks, guess_layer_template
from latent_guardrail.positions import encode_prompt
from latent_guardrail.settings import GuardSettings
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS, make_host

PROMPTS = HARMFUL[:3] + HARMLESS[:3]
ALLOW = GuardSettings(allow_weight_drift=True)


def _lora(host: Host, seed: int = 7) -> PeftModel:
    """``host``'s model (a copy) with a LoRA adapter whose both factors are random (so it changes the model)."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(host.model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    return model.eval()


@pytest.fixture(scope="module")
def base() -> Host:
    return make_host("chatml", seed=0)


@pytest.fixture(scope="module")
def peft_host(base: Host) -> Host:
    return Host(model=_lora(base), tokenizer=base.tokenizer, name="tiny+lora")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def merged_host(peft_host: Host) -> Host:
    merged = copy.deepcopy(peft_host.model).merge_and_unload()
    return Host(model=merged, tokenizer=peft_host.tokenizer, name="tiny+lora merged")


@pytest.fixture(scope="module")
def guard(base: Host) -> LatentGuard:
    return LatentGuard.calibrate(base, HARMFUL, HARMLESS, mode="tuned", progress=False)


def _states(host: Host) -> torch.Tensor:
    encodings = [encode_prompt(host.tokenizer, p) for p in PROMPTS]
    return extract_states(host.model, encodings, list(range(host.num_blocks + 1)),
                          pad_token_id=host.tokenizer.pad_token_id, views=("t_inst", "content_mean"), batch_size=4)


def test_the_blocks_of_a_peft_model_are_its_base_models(peft_host: Host) -> None:
    model = peft_host.model
    assert guess_layer_template(model) == "model.layers.{num}"
    blocks = decoder_blocks(model, "model.layers.{num}")
    assert blocks == list(model.get_base_model().model.layers)  # type: ignore[operator]
    assert any("lora_A" in name for name, _ in blocks[0].named_modules())


def test_a_peft_host_reads_the_states_of_its_merged_copy(peft_host: Host, merged_host: Host, base: Host) -> None:
    adapted, merged, plain = _states(peft_host), _states(merged_host), _states(base)
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapter does change the states


def test_a_peft_host_has_its_merged_copys_fingerprint(peft_host: Host, merged_host: Host, base: Host) -> None:
    adapted = peft_host.fingerprint_parts(None)
    assert adapted == merged_host.fingerprint_parts(None)
    differing = [key for key, value in base.fingerprint_parts(None).items() if adapted[key] != value]
    assert differing == [WEIGHTS_PART]
    names = [name for name, _ in effective_weights(peft_host.model)]
    assert not any("lora_" in name or "base_layer" in name for name in names)
    assert len(names) == len(effective_weights(merged_host.model))


def test_a_disabled_or_zero_adapter_is_the_base_model(base: Host) -> None:
    zero = get_peft_model(copy.deepcopy(base.model), LoraConfig(r=4, target_modules=["q_proj"]))  # B = 0
    assert Host(model=zero, tokenizer=base.tokenizer, name="zero").fingerprint_parts(None) == \
        base.fingerprint_parts(None)  # type: ignore[arg-type]
    adapted = _lora(base)
    with adapted.disable_adapter():
        assert Host(model=adapted, tokenizer=base.tokenizer, name="off").fingerprint_parts(None) == \
            base.fingerprint_parts(None)  # type: ignore[arg-type]


def test_merge_adapter_in_place_keeps_the_fingerprint(peft_host: Host) -> None:
    model = copy.deepcopy(peft_host.model)
    model.merge_adapter()
    merged_in_place = Host(model=model, tokenizer=peft_host.tokenizer, name="merged in place")  # type: ignore[arg-type]
    assert merged_in_place.fingerprint_parts(None) == peft_host.fingerprint_parts(None)


def test_the_guard_checks_a_peft_host_only_when_drift_is_allowed(guard: LatentGuard, peft_host: Host,
                                                                 merged_host: Host) -> None:
    with pytest.raises(WeightDriftError):
        LatentGuard(peft_host, guard.fitted)
    adapted = LatentGuard(peft_host, guard.fitted, ALLOW)
    hooks = hook_ids(peft_host.model)
    verdicts = adapted.check_batch(PROMPTS)
    assert hook_ids(peft_host.model) == hooks
    reference = LatentGuard(merged_host, guard.fitted, ALLOW).check_batch(PROMPTS)
    assert all(v.status == "ok" and v.weight_drift for v in verdicts)
    for verdict, other in zip(verdicts, reference, strict=True):
        assert verdict.score == pytest.approx(other.score, abs=1e-4)


def test_an_adapter_folder_loads_as_a_host(tmp_path: Path, base: Host) -> None:
    base_dir = tmp_path / "base"
    copy.deepcopy(base.model).save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    loaded_base = load_host(base_dir)
    adapted = _lora(loaded_base)
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    host = load_host(adapter_dir)
    assert isinstance(host.model, PeftModel)
    in_memory = Host(model=adapted, tokenizer=loaded_base.tokenizer, name="in memory")  # type: ignore[arg-type]
    assert host.fingerprint_parts(None) == in_memory.fingerprint_parts(None)
    assert host.fingerprint_parts(None)[WEIGHTS_PART] != loaded_base.fingerprint_parts(None)[WEIGHTS_PART]


def test_the_core_never_imports_peft() -> None:
    code = ("import sys, latent_guardrail, latent_guardrail.drift, latent_guardrail.hosts; "
            "print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
