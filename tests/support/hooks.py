"""Hook bookkeeping for tests.

transformers 5 installs its own persistent output-capturing hooks the first time a model runs with
``output_hidden_states=True``, so "no hooks remain" means: the set of hooks after our work equals the set
before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def hook_ids(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward hook and pre-hook registered on ``model`` and its submodules."""
    out: set[tuple[str, str, int]] = set()
    for name, module in model.named_modules():
        out |= {(name, "forward", key) for key in module._forward_hooks}
        out |= {(name, "pre", key) for key in module._forward_pre_hooks}
    return out


@contextmanager
def count_passes(model: nn.Module) -> Iterator[list[int]]:
    """Sequence lengths of the forward passes through ``model`` (prefills have length > 1)."""
    lengths: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(
        lambda _module, args, _output: lengths.append(int(args[0].shape[-1])))
    try:
        yield lengths
    finally:
        handle.remove()
