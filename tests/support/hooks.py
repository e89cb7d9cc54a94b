"""Hook bookkeeping for tests.

transformers 5 installs its own persistent output-capturing hooks the first time a model runs with
``output_hidden_states=True``, so "no hooks remain" means: the set of hooks after our work equals the set
before it.
"""

from __future__ import annotations

from torch import nn


def hook_ids(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward hook and pre-hook registered on ``model`` and its submodules."""
    out: set[tuple[str, str, int]] = set()
    for name, module in model.named_modules():
        out |= {(name, "forward", key) for key in module._forward_hooks}
        out |= {(name, "pre", key) for key in module._forward_pre_hooks}
    return out
