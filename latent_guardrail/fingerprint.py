"""Identity of a host as the guard sees it: model config, tokenizer, chat template, system prompt, weights.

A guard fitted on one host is meaningless on another (its centroids live in that model's hidden
space), so artifacts store this fingerprint and loading checks it component by component. The parts in
:data:`IDENTITY_PARTS` say *which* model it is (architecture, tokenizer, template); ``weights`` says which
weights it carries, so a fine-tune of the same model (a LoRA adapter, merged or not, or a full fine-tune)
differs in ``weights`` only: weight drift, which a guard may accept when asked to
(:func:`latent_guardrail.artifact.check_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .placement import stored_tensor

__all__ = ["fingerprint_parts", "combine_fingerprint", "effective_weights", "legacy_weights_digest", "IDENTITY_PARTS",
           "WEIGHTS_PART"]

IDENTITY_PARTS = ("model", "tokenizer", "chat_template")
"""The parts that name the model itself: when one of them differs the host is another model."""
WEIGHTS_PART = "weights"
"""The part that names the weights: when only it differs the host is a fine-tune of the same model."""
_SAMPLES = 64  # elements read per weight tensor

_CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
                "rms_norm_eps", "tie_word_embeddings")


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _adapter_layer(module: nn.Module) -> tuple[nn.Module, torch.Tensor | None] | None:
    """For a PEFT LoRA layer: its base layer and the weight change its active, unmerged adapters add
    (``(out, in)``, None when they add nothing); None for any other module.

    Duck-typed (``base_layer``, ``get_delta_weight``, ``merged``, ``disable_adapters``, ``active_adapters``,
    ``lora_A``), so peft is never imported here. A merged adapter's change already sits in the base weight; a
    disabled one adds nothing.
    """
    base, delta_of = getattr(module, "base_layer", None), getattr(module, "get_delta_weight", None)
    if not isinstance(base, nn.Module) or not callable(delta_of):
        return None
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return base, None
    names = [name for name in getattr(module, "active_adapters", ()) if name in getattr(module, "lora_A", {})]
    if not names:
        return base, None
    with torch.no_grad():
        return base, sum((delta_of(name) for name in names[1:]), start=delta_of(names[0]))


def effective_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weights the host computes with, in module order: ``(name, tensor)`` per parameter of every module.

    A PEFT model's LoRA layers count as their base weight plus the change of their active, unmerged adapters
    (the adapter tensors themselves are not listed), so a PeftModel and its merged copy give the same tensors
    (names keep the wrapper's prefixes). Offloaded values are read from accelerate's weights map; a weight
    shared by two modules (tied embeddings) is listed once.
    """
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        adapter = _adapter_layer(module)
        if adapter is not None:
            base, delta = adapter
            skip.append(name + ".")
            for key, value in base.named_parameters(recurse=False):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                tensor = stored_tensor(base, key).detach()
                if key == "weight" and delta is not None:
                    tensor = tensor + delta.to(tensor.device, tensor.dtype)
                out.append((f"{name}.{key}", tensor))
            continue
        for key, value in module.named_parameters(recurse=False):
            if id(value) in seen:
                continue
            seen.add(id(value))
            out.append((f"{name}.{key}" if name else key, stored_tensor(module, key).detach()))
    return out


def _weights_digest(model: nn.Module) -> str:
    """Hash of ``_SAMPLES`` evenly spaced elements of every weight tensor, rounded to bfloat16.

    Rounding to bfloat16 first makes a float32 copy and a bfloat16 copy of one model hash alike (casting is
    round-to-nearest, so both give the same bfloat16 values); any fine-tune that moves a sampled element by
    more than bfloat16's precision (about 0.4 %) changes the hash. A float16 copy reads as drifted (its
    double rounding moves some elements by one bfloat16 step).
    """
    digest = hashlib.sha256()
    for _, tensor in effective_weights(model):
        flat = tensor.reshape(-1)
        count = min(_SAMPLES, flat.numel())
        picks = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[picks.to(flat.device)].cpu()
        if sample.is_floating_point():
            sample = sample.to(torch.bfloat16).view(torch.int16)
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def legacy_weights_digest(model: nn.Module) -> str:
    """The ``weights`` part as artifacts written before it covered every tensor stored it: rounded norms of the
    first 8 input-embedding rows. Only to recognise such an artifact's own host (it cannot see an adapter)."""
    embed = stored_tensor(model.get_input_embeddings(), "weight")  # type: ignore[operator]  # offloaded too
    probe = embed[: min(8, embed.shape[0])].detach().float().cpu()
    return _digest([round(float(v), 2) for v in probe.norm(dim=-1)])


def fingerprint_parts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None,
                      chat_template: str | None = None) -> dict[str, str]:
    """Short hashes of each part of the host's identity (they are compared one by one on load).

    ``weights`` hashes a sample of every weight tensor the host computes with (:func:`effective_weights`,
    rounded to bfloat16), so two fine-tunes with the same config differ — also a LoRA adapter, merged or
    not — while a float32 and a bfloat16 copy of one model agree.
    """
    config = getattr(model, "config", None)
    cfg = {key: getattr(config, key, None) for key in _CONFIG_KEYS} if config is not None else {}
    vocab = sorted(tokenizer.get_vocab().items())
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    return {
        "model": _digest(cfg),
        "tokenizer": _digest(vocab),
        "chat_template": _digest(template),
        "system_prompt": _digest(system_prompt),
        WEIGHTS_PART: _weights_digest(model),
    }


def combine_fingerprint(parts: dict[str, str]) -> str:
    """One hex string for all parts."""
    return _digest(parts)
