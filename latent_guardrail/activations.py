"""Capture residual-stream states at chosen layers and token positions with forward hooks.

Residual layer ``l < num_blocks`` is the input of decoder block ``l`` (a forward *pre*-hook) and
layer ``num_blocks`` is the output of the last block, before the final norm (a forward hook), as in
the paper. Only the requested token positions are kept, so memory does not grow with the prompt.

All hooks live inside :func:`capture`, a context manager that removes every handle in ``finally``
(also when registering fails half-way or the forward pass raises). A hook only records the thread
that installed it, so states never cross between threads; registering hooks while another thread runs
the same model is still unsafe in torch (its hook dictionaries are not thread-safe), so callers that
share a model between threads serialise model work with one lock (``Host.lock`` — ``LatentGuard`` does).
With ``stop_early`` the pass stops right after the last layer needed (early exit): the blocks above it and
the LM head never run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import plan_batches
from .layers import check_layers, decoder_blocks, input_device
from .positions import PromptEncoding, pad_batch
from .views import View, ViewLayout

__all__ = ["Capture", "capture", "residual_hooks", "run_capture", "extract_states", "extract_end_states"]

class _EarlyExit(Exception):
    """Raised by a hook to stop the forward pass once every needed layer is recorded."""


@dataclass
class Capture:
    """States recorded during one forward pass.

    ``states[layer]`` has shape ``(batch, positions + spans, d_model)`` in float32 on the CPU: first the
    tokens at ``positions``, then the mean over each inclusive ``[start, end]`` span of ``spans``
    (padded coordinates).
    """

    layers: tuple[int, ...]
    positions: torch.Tensor
    spans: torch.Tensor | None = None
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    stopped_early: bool = False

    @property
    def complete(self) -> bool:
        """True once every requested layer has been recorded."""
        return all(layer in self.states for layer in self.layers)

    def stacked(self) -> torch.Tensor:
        """All layers as one tensor of shape ``(batch, positions, layers, d_model)``."""
        return torch.stack([self.states[layer] for layer in self.layers], dim=2)


def _record(result: Capture, layer: int, hidden: torch.Tensor, stop_after: int | None) -> None:
    if layer in result.states:  # later decoding steps of a generation: keep the prefill's states
        return
    index = result.positions.to(hidden.device)
    if index.shape[0] != hidden.shape[0]:
        raise RuntimeError(f"captured batch {hidden.shape[0]} != positions batch {index.shape[0]}")
    parts = [torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])).float()]
    if result.spans is not None and result.spans.shape[1] > 0:
        spans = result.spans.to(hidden.device)                                        # (batch, m, 2)
        steps = torch.arange(hidden.shape[1], device=hidden.device).view(1, 1, -1)
        mask = ((steps >= spans[..., :1]) & (steps <= spans[..., 1:])).to(torch.float32)  # (batch, m, seq)
        summed = torch.einsum("bms,bsd->bmd", mask, hidden.float())
        parts.append(summed / mask.sum(-1, keepdim=True).clamp(min=1.0))
    result.states[layer] = torch.cat(parts, dim=1).detach().to("cpu", torch.float32)
    if stop_after is not None and layer >= stop_after and result.complete:
        result.stopped_early = True
        raise _EarlyExit


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[int],
    positions: torch.Tensor,
    *,
    layer_template: str | None = None,
    stop_early: bool = False,
    spans: torch.Tensor | None = None,
) -> Iterator[Capture]:
    """Record residual states at ``layers`` and ``positions`` during forward passes inside the block.

    Args:
        model: the host model.
        layers: residual layers ``0..num_blocks`` (negative counts from the end).
        positions: ``(batch, k)`` token indices (padded coordinates) to keep.
        stop_early: stop the pass after the last layer needed (the ``with`` block then sees
            ``capture.stopped_early``; the exception is swallowed only by :func:`run_capture`).
        spans: ``(batch, m, 2)`` inclusive token spans to average (padded coordinates), or None.

    Yields:
        A :class:`Capture` filled while the model runs.
    """
    blocks = decoder_blocks(model, layer_template)
    wanted = check_layers(layers, len(blocks))
    if positions.dim() != 2:
        raise ValueError(f"positions must have shape (batch, k), got {tuple(positions.shape)}")
    result = Capture(layers=wanted, positions=positions.long(), spans=None if spans is None else spans.long())
    stop_after = max(wanted) if stop_early else None

    def record(layer: int, hidden: torch.Tensor | None) -> None:
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError("cannot find the hidden states among the decoder block's inputs")
        _record(result, layer, hidden, stop_after)

    with residual_hooks(blocks, wanted, record):
        yield result


@contextmanager
def residual_hooks(blocks: Sequence[nn.Module], layers: Sequence[int],
                   record: Callable[[int, torch.Tensor | None], None]) -> Iterator[None]:
    """Call ``record(layer, hidden)`` with the residual stream at each of ``layers`` (checked ``0..len(blocks)``)
    on every forward pass inside the block: the input of block ``layer`` (a forward pre-hook; ``hidden`` is None
    when the block's inputs hold no hidden-state tensor), or the output of the last block for
    ``layer == len(blocks)``. Only the thread that entered the block is recorded; every hook is removed in
    ``finally``."""
    owner = threading.get_ident()
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre_hook(layer: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            if threading.get_ident() == owner:
                record(layer, args[0] if args and isinstance(args[0], torch.Tensor)
                       else (kwargs or {}).get("hidden_states"))
        return hook

    def post_hook(layer: int) -> Any:
        def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() == owner:
                record(layer, output[0] if isinstance(output, tuple) else output)
        return hook

    try:
        for layer in layers:
            if layer < len(blocks):
                handles.append(blocks[layer].register_forward_pre_hook(pre_hook(layer), with_kwargs=True))
            else:
                handles.append(blocks[-1].register_forward_hook(post_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    positions: torch.Tensor,
    *,
    layer_template: str | None = None,
    stop_early: bool = True,
    spans: torch.Tensor | None = None,
    kv_cache: tuple[str, Any] | None = None,
) -> Capture:
    """One forward pass over a padded batch, returning the states at ``layers`` × ``positions``.

    Args:
        input_ids, attention_mask: ``(batch, seq)``.
        positions: ``(batch, k)`` in padded coordinates.
        kv_cache: ``(argument name, cache)``: continue from the KV cache of earlier tokens (filled in place);
            ``attention_mask`` then covers them too, ``(batch, cached + seq)``.

    Returns:
        A complete :class:`Capture` (``stacked()`` is ``(batch, k, layers, d_model)``, float32).
    """
    device = input_device(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, attention_mask.shape[1] - input_ids.shape[1]:]
    extra = {} if kv_cache is None else {kv_cache[0]: kv_cache[1]}
    with capture(model, layers, positions, layer_template=layer_template, stop_early=stop_early,
                 spans=spans) as result:
        try:
            with torch.inference_mode():
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      position_ids=position_ids.to(device), use_cache=kv_cache is not None, **extra)
        except _EarlyExit:
            pass
    if not result.complete:
        missing = [layer for layer in result.layers if layer not in result.states]
        raise RuntimeError(f"the forward pass did not reach layers {missing}")
    return result


def extract_states(
    model: nn.Module,
    encodings: Sequence[PromptEncoding],
    layers: Sequence[int],
    *,
    pad_token_id: int,
    views: Sequence[str | View] = ("t_inst",),
    batch_size: int = 16,
    layer_template: str | None = None,
    stop_early: bool = True,
    progress: bool | str = False,
) -> torch.Tensor:
    """States of many prompts, batched by length (left padding), in the input order.

    Args:
        views: what to read per prompt: views of :data:`latent_guardrail.views.VIEWS` (or their names).
        progress: show a progress bar (a string is used as its label).

    Returns:
        ``(n_prompts, len(views), len(layers), d_model)`` float32 on the CPU, in the order of ``views``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    layout = ViewLayout.of(views)
    chunks = plan_batches([len(encoding.input_ids) for encoding in encodings], batch_size)
    out: list[torch.Tensor | None] = [None] * len(encodings)
    label = progress if isinstance(progress, str) else "reading hidden states"
    for chunk in tqdm(chunks, desc=label, disable=not progress, unit="batch"):
        batch = pad_batch([encodings[i] for i in chunk], pad_token_id, side="left")
        positions, spans = layout.locate(batch)
        result = run_capture(model, batch.input_ids, batch.attention_mask, layers, positions,
                             layer_template=layer_template, stop_early=stop_early, spans=spans)
        stacked = result.stacked()[:, list(layout.order)]
        for row, index in enumerate(chunk):
            out[index] = stacked[row]
    if not out:
        raise ValueError("no prompts to read")
    return torch.stack([state for state in out if state is not None])


def extract_end_states(
    model: nn.Module,
    encodings: Sequence[PromptEncoding],
    layers: Sequence[int],
    *,
    pad_token_id: int,
    batch_size: int = 16,
    layer_template: str | None = None,
    max_ends: int | None = None,
    progress: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The states at every clause end (``PromptEncoding.ends``) of many prompts, one row per end.

    Args:
        max_ends: keep only the last this many ends of a prompt (None: all), as the ``clause_ends`` view does.

    Returns:
        ``states`` ``(rows, len(layers), d_model)`` float32 on the CPU, ``prompt`` ``(rows,)`` the index of each
        row's prompt and ``end`` ``(rows,)`` its index into that prompt's ``ends``; rows are in input order.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    kept = [list(e.ends)[-max_ends:] if max_ends else list(e.ends) for e in encodings]
    chunks = plan_batches([len(encoding.input_ids) for encoding in encodings], batch_size)
    per_prompt: list[torch.Tensor | None] = [None] * len(encodings)
    label = progress if isinstance(progress, str) else "reading clause ends"
    for chunk in tqdm(chunks, desc=label, disable=not progress, unit="batch"):
        batch = pad_batch([encodings[i] for i in chunk], pad_token_id, side="left")
        width = max(len(kept[i]) or 1 for i in chunk)
        assert batch.ends is not None
        positions = batch.ends[:, -width:]  # every row's last ends, right-aligned and filled as pad_batch does
        result = run_capture(model, batch.input_ids, batch.attention_mask, layers, positions,
                             layer_template=layer_template)
        stacked = result.stacked()                                        # (batch, width, layers, d)
        for row, index in enumerate(chunk):
            count = len(kept[index]) or 1
            per_prompt[index] = stacked[row, width - count:]
    if not per_prompt:
        raise ValueError("no prompts to read")
    states = [s for s in per_prompt if s is not None]
    prompt = torch.cat([torch.full((s.shape[0],), i, dtype=torch.long) for i, s in enumerate(states)])
    end = torch.cat([torch.arange(s.shape[0]) + (len(encodings[i].ends) - s.shape[0]) for i, s in enumerate(states)])
    return torch.cat(states), prompt, end
