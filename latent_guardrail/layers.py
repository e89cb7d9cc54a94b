"""Where the decoder blocks live in a model, addressed as data.

A layer template such as ``"model.layers.{num}"`` names block ``num``; it is guessed from
``named_modules()`` and can always be overridden. Residual-stream *layers* are numbered
``0..num_blocks``: layer ``l < num_blocks`` is the input of block ``l`` and layer ``num_blocks``
is the output of the last block (before the final norm), as in the paper.

A PEFT model (``peft.PeftModel``, adapters merged or not) is addressed through the model it wraps
(:func:`unwrap_adapters`), so a template fitted on the base host names the same blocks in its fine-tunes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from .errors import LayerError
from .placement import execution_device

__all__ = ["check_layers", "decoder_blocks", "guess_layer_template", "input_device", "num_residual_layers",
           "unwrap_adapters"]

_KNOWN_TEMPLATES = (
    "model.layers.{num}",            # Llama, Mistral, Qwen2, Gemma, SmolLM
    "model.language_model.layers.{num}",
    "transformer.h.{num}",           # GPT-2, Falcon, Bloom-like
    "gpt_neox.layers.{num}",
    "model.decoder.layers.{num}",    # OPT
    "transformer.blocks.{num}",
    "layers.{num}",
)


def unwrap_adapters(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (its LoRA layers sit in that model's blocks), else ``model``.

    Duck-typed (``peft_config`` and ``get_base_model()``), so peft is never imported here; the hooks placed on the
    wrapped model's blocks run in the wrapper's forward pass.
    """
    while hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
        inner = model.get_base_model()  # type: ignore[operator]  # duck-typed peft wrapper
        if not isinstance(inner, nn.Module) or inner is model:
            break
        model = inner
    return model


def guess_layer_template(model: nn.Module) -> str:
    """Guess the layer template of ``model``: a known one if present, else the longest numbered ModuleList.

    Raises:
        LayerError: no list of decoder blocks is found; the message says how to pass one.
    """
    model = unwrap_adapters(model)
    names = {name for name, _ in model.named_modules()}
    for template in _KNOWN_TEMPLATES:
        if template.format(num=0) in names:
            return template
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (best is None or len(module) > best[0]):
            best = (len(module), name)
    if best is None:
        raise LayerError(
            f"cannot find the decoder blocks of {type(model).__name__}; pass layer_template=..., "
            "e.g. layer_template='model.layers.{num}' (see model.named_modules())"
        )
    return best[1] + ".{num}"


def decoder_blocks(model: nn.Module, layer_template: str | None = None) -> list[nn.Module]:
    """The decoder blocks of ``model`` in order, found with ``layer_template`` (guessed when None)."""
    model = unwrap_adapters(model)
    template = layer_template if layer_template is not None else guess_layer_template(model)
    if "{num}" not in template:
        raise LayerError(f"layer_template must contain '{{num}}', got {template!r}")
    modules = dict(model.named_modules())
    blocks: list[nn.Module] = []
    while template.format(num=len(blocks)) in modules:
        blocks.append(modules[template.format(num=len(blocks))])
    if not blocks:
        pattern = re.escape(template).replace(r"\{num\}", r"\d+")
        near = [n for n in modules if re.fullmatch(pattern, n)]
        raise LayerError(
            f"layer_template {template!r} matches no module of {type(model).__name__}"
            + (f" (found {near[:3]} but not block 0)" if near else "")
            + "; pass layer_template=... naming the decoder blocks, e.g. 'model.layers.{num}'"
        )
    return blocks


def num_residual_layers(num_blocks: int) -> int:
    """Number of residual-stream layers read for ``num_blocks`` blocks (``num_blocks + 1``)."""
    return num_blocks + 1


def check_layers(layers: Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """Validate and sort residual layers; negative values count from the end (-1 = last block's output).

    Raises:
        LayerError: a layer is out of range; the message lists the valid range.
    """
    total = num_residual_layers(num_blocks)
    out: set[int] = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LayerError(f"layers must be integers, got {layer!r}")
        resolved = layer + total if layer < 0 else layer
        if not 0 <= resolved < total:
            raise LayerError(f"layer {layer} is out of range: valid layers are 0..{total - 1} (or -{total}..-1)")
        out.add(resolved)
    if not out:
        raise LayerError("at least one layer must be read")
    return tuple(sorted(out))


def input_device(model: nn.Module) -> torch.device:
    """Device where the model's input ids must be sent: where its input embeddings run.

    For a host placed by accelerate this is the embeddings' execution device, also when they are offloaded
    (their weights then lie on ``meta``); see :func:`latent_guardrail.placement.execution_device`.
    """
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    return execution_device(embeddings if isinstance(embeddings, nn.Module) else model)
