"""Where a host's modules run: devices and dtypes of hosts placed by accelerate (``device_map``, offloading).

A host loaded with ``device_map="auto"`` may hold its decoder blocks on several GPUs, on the CPU, or
offloaded to disk with their weights on the ``meta`` device until accelerate's hook loads them for the
forward pass. The capture hooks of :mod:`latent_guardrail.activations` read each state on whatever device
its block runs and move only the few vectors needed to the CPU, so the guard itself needs one thing from
this module: the *execution* device of a module (where its inputs must go), which for an offloaded module
is not where its (meta) weights seem to lie. The checks here turn a device map that names a device this
machine does not have into a :class:`~latent_guardrail.errors.HostError` before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import HostError

__all__ = [
    "BlockPlacement",
    "DEVICE_MAP_STRATEGIES",
    "available_devices",
    "check_device",
    "check_device_map",
    "describe_placement",
    "execution_device",
    "stored_tensor",
]

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""The ``device_map`` strategies accelerate computes itself."""


@dataclass(frozen=True)
class BlockPlacement:
    """Where one decoder block runs: its execution device, parameter dtypes, and whether it is offloaded."""

    block: int
    device: torch.device
    dtypes: tuple[torch.dtype, ...]
    offloaded: bool


def available_devices() -> list[str]:
    """Devices this machine has, as device-map values: ``cpu``, ``disk``, ``cuda:0`` … ``mps``, ``xpu:0`` …"""
    out = ["cpu", "disk"]
    if torch.cuda.is_available():
        out += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        out += [f"xpu:{index}" for index in range(torch.xpu.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def _count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "xpu":
        return torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    return 1 if kind == "cpu" else 0


def check_device(device: str | int | torch.device, *, what: str = "device") -> torch.device:
    """Parse ``device`` and check that this machine has it (an int means that CUDA device).

    Raises:
        HostError: unknown device name, or a device this machine does not have (the message lists those it has).
    """
    if isinstance(device, bool):
        raise HostError(f"{what} must be a device name such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        parsed = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise HostError(f"{what} {device!r} is not a device name; this machine has: "
                        f"{', '.join(available_devices())}") from exc
    if parsed.type == "meta":
        raise HostError(f"{what} {device!r}: the meta device holds no weights; use 'disk' to offload a module")
    index = 0 if parsed.index is None else parsed.index
    if index >= _count(parsed.type):
        raise HostError(f"{what} {device!r} does not exist on this machine; it has: "
                        f"{', '.join(available_devices())}. Fix the device map or load with device_map='auto'")
    return parsed


def check_device_map(device_map: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """Validate a ``device_map`` before transformers/accelerate load anything.

    Accepts a strategy (:data:`DEVICE_MAP_STRATEGIES`), one device for the whole model (``"cpu"``,
    ``"cuda:1"``), or a mapping of module names to devices (``int`` = CUDA index, ``"cpu"``, ``"disk"``,
    ``"cuda:1"``, ``torch.device``). Returns it unchanged (a mapping as a plain ``dict``).

    Raises:
        HostError: an unknown strategy, an empty mapping, or a device this machine does not have.
    """
    if isinstance(device_map, str):
        if device_map in DEVICE_MAP_STRATEGIES:
            return device_map
        check_device(device_map, what="device_map")
        return device_map
    if not isinstance(device_map, Mapping) or not device_map:
        raise HostError(f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)}, a device, or a non-empty "
                        f"mapping of module names to devices; got {device_map!r}")
    for name, value in device_map.items():
        if not isinstance(name, str):
            raise HostError(f"device_map keys must be module names, got {name!r}")
        if value != "disk":
            check_device(value, what=f"device_map[{name!r}]")
    return dict(device_map)


def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device of accelerate's hook on ``module`` (an ``AlignDevicesHook``, maybe in a sequence)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", ())) or ([hook] if hook is not None else [])
    for item in hooks:
        device = getattr(item, "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return None


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device if it (or, for a container, the first submodule
    holding weights) is hooked, else the device of its first weight.

    Raises:
        HostError: the weights are on the ``meta`` device and no accelerate hook loads them.
    """
    for sub in module.modules():
        hooked = _hook_device(sub)
        if hooked is not None:
            return hooked
        direct = next(sub.parameters(recurse=False), None)
        tensor = direct if direct is not None else next(sub.buffers(recurse=False), None)
        if tensor is None:
            continue
        if tensor.device.type == "meta":
            raise HostError(f"{type(sub).__name__} has its weights on the meta device and no accelerate hook loads "
                            "them; load the host with device_map=... (and offload_folder=...) instead of moving it "
                            "to meta")
        return tensor.device
    return torch.device("cpu")


def stored_tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The value of ``module``'s parameter ``name``, also when accelerate offloaded it (its weight is then on
    ``meta`` and the value lies in the hook's weights map, in CPU memory or on disk).

    Raises:
        HostError: the parameter is on ``meta`` and no accelerate hook holds its value.
    """
    tensor = getattr(module, name)
    if not isinstance(tensor, torch.Tensor):
        raise HostError(f"{type(module).__name__} has no tensor named {name!r}")
    if tensor.device.type != "meta":
        return tensor
    hook = getattr(module, "_hf_hook", None)
    for item in list(getattr(hook, "hooks", ())) or ([hook] if hook is not None else []):
        weights = getattr(item, "weights_map", None)
        if weights is not None and name in weights:
            value = weights[name]
            if isinstance(value, torch.Tensor):
                return value
    raise HostError(f"{type(module).__name__}.{name} is on the meta device and no accelerate hook holds its value")


def describe_placement(blocks: list[nn.Module]) -> list[BlockPlacement]:
    """Execution device, parameter dtypes and offloading of each decoder block (see :func:`layers.decoder_blocks`)."""
    out = []
    for index, block in enumerate(blocks):
        dtypes = tuple(sorted({p.dtype for p in block.parameters()}, key=str))
        offloaded = any(p.device.type == "meta" for p in block.parameters())
        out.append(BlockPlacement(block=index, device=execution_device(block), dtypes=dtypes, offloaded=offloaded))
    return out
