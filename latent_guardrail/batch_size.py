"""Choose how many prompts go into one forward pass (``--batch-size auto``).

Batches are already bucketed by length (:func:`latent_guardrail.batching.plan_batches` sorts the
prompts by token count and pads each batch only to its own longest prompt), so the worst batch is the one
holding the longest prompts. On an accelerator :func:`auto_batch_size` runs exactly that batch — the longest
prompts, plus the tokens generation would add — starting from ``cap`` and halving on out-of-memory
(accelerate's ``find_executable_batch_size``), so the size it returns fits. On a CPU-only host there is no
out-of-memory error to catch (the process would be killed or swap), and larger batches barely speed up CPU
matmuls, so it returns a bounded size from a token budget instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .activations import run_capture
from .errors import HostError
from .hosts import Host
from .layers import decoder_blocks, input_device
from .placement import describe_placement
from .positions import Prompt, encode_batch

__all__ = ["CPU_TOKEN_BUDGET", "MAX_AUTO_BATCH", "auto_batch_size", "resolve_batch_size"]

MAX_AUTO_BATCH = 256
"""The largest batch ``auto`` picks (more rarely pays: the GPU is busy long before)."""
CPU_TOKEN_BUDGET = 2048
"""Padded tokens per forward pass ``auto`` aims at when the host runs on the CPU only."""


def _on_cpu_only(model: nn.Module, layer_template: str | None) -> bool:
    devices = {placement.device.type for placement in describe_placement(decoder_blocks(model, layer_template))}
    return devices <= {"cpu"}


def auto_batch_size(
    model: nn.Module,
    lengths: Sequence[int],
    layers: Sequence[int],
    *,
    extra_tokens: int = 0,
    layer_template: str | None = None,
    cap: int = MAX_AUTO_BATCH,
    cpu_token_budget: int = CPU_TOKEN_BUDGET,
    probe: bool | None = None,
) -> int:
    """The largest batch of the longest prompts that fits, at most ``cap`` and at most ``len(lengths)``.

    Args:
        model: the host model (placed however: one device, a ``device_map``, offloaded).
        lengths: token count of every prompt that will be read.
        layers: the residual layers that will be read (early exit stops after the last one).
        extra_tokens: tokens generated after each prompt (``max_new_tokens`` for behaviour selection).
        cap: the largest batch considered.
        cpu_token_budget: CPU-only hosts: padded tokens per batch (``budget // longest``, within ``1..cap``).
        probe: run the halving probe (None: only when a block runs on an accelerator).

    Raises:
        HostError: not even one of the longest prompts fits on the device.
        ValueError: no prompts.
    """
    if not lengths:
        raise ValueError("no prompts to size a batch for")
    cap = max(1, min(cap, len(lengths)))
    longest = max(lengths) + max(0, extra_tokens)
    if not (probe if probe is not None else not _on_cpu_only(model, layer_template)):
        return max(1, min(cap, cpu_token_budget // max(1, longest)))
    from accelerate.utils import find_executable_batch_size

    device = input_device(model)
    fits: list[int] = []
    tried = [cap]

    def halve() -> int:
        tried.append(tried[-1] // 2)
        return tried[-1]

    @find_executable_batch_size(starting_batch_size=cap, reduce_batch_size_fn=halve)
    def run_batch(batch_size: int) -> None:
        ids = torch.ones((batch_size, longest), dtype=torch.long)          # (batch, seq): the worst batch's shape
        mask = torch.ones_like(ids)
        positions = torch.full((batch_size, 1), longest - 1, dtype=torch.long)
        run_capture(model, ids, mask, layers, positions, layer_template=layer_template)
        fits.append(batch_size)

    try:
        run_batch()
    except RuntimeError as exc:
        if "No executable batch size" not in str(exc):
            raise
        raise HostError(f"not even one prompt of {longest} tokens fits on {device}: {exc}. Cap the prompt "
                        "length (GuardSettings.max_tokens), load the host in 4-bit, or spread it with "
                        "device_map='auto'") from exc
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return fits[-1]


def resolve_batch_size(spec: str | int, host: Host, prompts: Sequence[Prompt], *, system_prompt: str | None = None,
                       extra_tokens: int = 0, layer_template: str | None = None) -> int:
    """A batch size from a CLI value: a positive integer, or ``"auto"`` (:func:`auto_batch_size` over ``prompts``
    rendered as calibration renders them, reading every residual layer).

    Raises:
        ValueError: neither a positive integer nor ``auto``.
    """
    text = str(spec).strip().lower()
    if text != "auto":
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"batch size must be a positive integer or 'auto', got {spec!r}")
        return int(text)
    encodings = encode_batch(host.tokenizer, prompts, system_prompt=system_prompt, max_tokens=host.max_positions)
    return auto_batch_size(host.model, [len(e.input_ids) for e in encodings], range(host.num_blocks + 1),
                           extra_tokens=extra_tokens, layer_template=layer_template)
