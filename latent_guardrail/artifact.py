"""Save and load a fitted guard: ``guard.json`` (schema below) + ``tensors.safetensors``. No pickle, ever.

Schema of ``guard.json`` (format ``latent-guardrail``, version :data:`FORMAT_VERSION`)::

    format, version            "latent-guardrail", 4 (versions 1, without a response part, 2, whose response
                               part reads the answer alone, and 3, whose pooled scorer has no category mix,
                               still load)
    fingerprint, fingerprint_parts   host identity (model config, tokenizer, chat template, system prompt, weights)
    num_blocks, hidden_size, layer_template
    position_rule              "t_inst = last token of the last user message (sentinel + offsets)"
    scorer                     the scorer's config(): mode, layers, threshold, categories, ... (version 4: a
                               pooled scorer's category_mix, mix_calibration, mixed_categories)
    views                      the spec (name, kind, rule) of every view the scorer reads; checked on load
    settings                   GuardSettings
    refusal_source             "behaviour" | "contrastive" | null
    categories                 names of the per-category centroids
    report                     calibration summary (counts, CV figures, timings)
    tensors_sha256             sha256 of tensors.safetensors (detects truncation and edits)
    response                   optional (version 2): the response scorer's config() — mode "response", layers,
                               view, view_rule, every, threshold, calibration, shrinkage, gate (the harm
                               read-out; version 3: its "prompt" part reads the prompt's t_inst state); its
                               tensors are ``response.directions`` / ``response.midpoints`` ``(layers, d)``,
                               ``response.gate_*`` and ``response.gate_prompt_*`` likewise

Tensors: ``centroids.harmful`` / ``centroids.harmless`` ``(num_blocks + 1, d)``, ``centroids.category.<name>``,
``refusal.direction`` and the scorer's own (named with its ``tensor_prefix``, e.g. ``tuned.*``), all float32.
The folder is written to a temporary sibling and renamed, so a crash never leaves a half-written guard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .centroids import Centroids
from .errors import ArtifactError, FingerprintMismatchError, WeightDriftError
from .files import atomic_folder
from .fingerprint import WEIGHTS_PART
from .fitted import FittedGuard
from .response import ResponseScorer
from .scorers import scorer_from_artifact, scorer_tensors
from .settings import GuardSettings
from .views import get_view

__all__ = ["FORMAT", "FORMAT_VERSION", "save_fitted", "load_fitted", "check_fingerprint",
           "HEADER_FILE", "TENSORS_FILE"]

FORMAT = "latent-guardrail"
FORMAT_VERSION = 4
HEADER_FILE = "guard.json"
TENSORS_FILE = "tensors.safetensors"
POSITION_RULE = "t_inst = last token of the last user message (sentinel + offsets)"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_fitted(fitted: FittedGuard, folder: str | os.PathLike[str]) -> Path:
    """Write ``fitted`` to ``folder`` atomically (an existing guard there is replaced)."""
    target = Path(folder)
    tensors: dict[str, torch.Tensor] = {
        "centroids.harmful": fitted.centroids.harmful.float(),
        "centroids.harmless": fitted.centroids.harmless.float(),
    }
    for name, value in fitted.centroids.categories.items():
        tensors[f"centroids.category.{name}"] = value.float()
    if fitted.refusal_direction is not None:
        tensors["refusal.direction"] = fitted.refusal_direction.float()
    tensors.update(fitted.scorer.to_tensors())
    if fitted.response is not None:
        tensors.update(fitted.response.to_tensors())
    with atomic_folder(target) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE),
                  metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": fitted.fingerprint,
            "fingerprint_parts": fitted.fingerprint_parts,
            "num_blocks": fitted.num_blocks,
            "hidden_size": fitted.hidden_size,
            "layer_template": fitted.layer_template,
            "position_rule": POSITION_RULE,
            "scorer": fitted.scorer.config(),
            "views": [get_view(view).spec() for view in fitted.scorer.views],
            "settings": fitted.settings.model_dump(),
            "refusal_source": fitted.refusal_source,
            "categories": list(fitted.centroids.categories),
            "report": fitted.report,
            "tensors_sha256": _sha256(tmp / TENSORS_FILE),
        }
        if fitted.response is not None:
            header["response"] = fitted.response.config()
        (tmp / HEADER_FILE).write_text(json.dumps(header, indent=2, default=float), encoding="utf-8")
    return target


def _read_header(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ArtifactError(f"no guard at {folder}: expected a folder with {HEADER_FILE} and {TENSORS_FILE} "
                            "(create one with `latent-guardrail calibrate ... --out DIR` or guard.save(DIR))")
    path = folder / HEADER_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a guard: {HEADER_FILE} is missing")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a latent-guardrail header (format={header.get('format')!r})"
                            if isinstance(header, dict) else f"{path} is not a JSON object")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(f"{path} has format version {version!r}; this latent-guardrail reads versions "
                            f"1..{FORMAT_VERSION} — upgrade latent-guardrail to load it")
    for key in ("fingerprint_parts", "num_blocks", "hidden_size", "layer_template", "scorer", "settings",
                "tensors_sha256"):
        if key not in header:
            raise ArtifactError(f"{path} lacks the key {key!r}")
    _check_header_types(header, path)
    return header


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "fingerprint_parts": (dict,), "num_blocks": (int,), "hidden_size": (int,), "layer_template": (str,),
    "scorer": (dict,), "settings": (dict,), "tensors_sha256": (str,), "categories": (list,), "report": (dict,),
    "refusal_source": (str, type(None)),
}
_TENSOR_DTYPES = (torch.float32, torch.float64)  # float32 is written; float64 was written by early versions


def _check_header_types(header: dict[str, Any], path: Path) -> None:
    """Each header field has its schema type (so a forged header is an ArtifactError, not a crash later)."""
    for key, types in _HEADER_TYPES.items():
        value = header.get(key)
        if key in header and (isinstance(value, bool) or not isinstance(value, types)):
            raise ArtifactError(f"{path}: {key!r} must be of type {' or '.join(t.__name__ for t in types)}, "
                                f"got {type(value).__name__}")
    if header["num_blocks"] < 1 or header["hidden_size"] < 1:
        raise ArtifactError(f"{path}: num_blocks and hidden_size must be positive, got {header['num_blocks']} "
                            f"and {header['hidden_size']}")
    parts, names = header["fingerprint_parts"], header.get("categories", [])
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in parts.items()):
        raise ArtifactError(f"{path}: 'fingerprint_parts' must map names to hash strings")
    if not all(isinstance(name, str) for name in names):
        raise ArtifactError(f"{path}: 'categories' must be a list of names")


def load_fitted(folder: str | os.PathLike[str]) -> FittedGuard:
    """Read a guard written by :func:`save_fitted`, checking format, checksums and shapes.

    Raises:
        ArtifactError: missing, corrupt, edited, of a future version, or not a safetensors file.
    """
    root = Path(folder)
    header = _read_header(root)
    tensor_path = root / TENSORS_FILE
    if not tensor_path.is_file():
        raise ArtifactError(f"{root} is not a complete guard: {TENSORS_FILE} is missing")
    if _sha256(tensor_path) != header["tensors_sha256"]:
        raise ArtifactError(f"{tensor_path} does not match its checksum in {HEADER_FILE}: the file was truncated "
                            "or edited; recalibrate or restore it")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{tensor_path} is not a valid safetensors file: {exc}") from exc
    layers, d = int(header["num_blocks"]) + 1, int(header["hidden_size"])

    def take(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if name not in tensors:
            raise ArtifactError(f"{tensor_path} lacks the tensor {name!r}")
        value = tensors[name]
        if value.dtype not in _TENSOR_DTYPES:
            raise ArtifactError(f"tensor {name!r} has dtype {value.dtype}, expected float32")
        if shape is not None and tuple(value.shape) != shape:
            raise ArtifactError(f"tensor {name!r} has shape {tuple(value.shape)}, expected {shape}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ArtifactError(f"tensor {name!r} contains NaN or inf")
        return value

    categories = {name: take(f"centroids.category.{name}", (layers, d)).double()
                  for name in header.get("categories", [])}
    centroids = Centroids(tuple(range(layers)), take("centroids.harmful", (layers, d)).double(),
                          take("centroids.harmless", (layers, d)).double(), categories)
    refusal = take("refusal.direction", (layers, d)) if "refusal.direction" in tensors else None
    _check_rules(header, root / HEADER_FILE)
    try:
        own = {k: take(k) for k in scorer_tensors(header["scorer"].get("mode"), tensors)}
        scorer = scorer_from_artifact(header["scorer"], own, centroids)
        settings = GuardSettings.model_validate(header["settings"])
    except (KeyError, ValueError, TypeError, ValidationError) as exc:
        raise ArtifactError(f"{root / HEADER_FILE} has an invalid scorer or settings section: {exc}") from exc
    try:
        scorer.validate(d)
    except ValueError as exc:
        raise ArtifactError(f"{root / HEADER_FILE}: {exc}") from exc
    if any(not 0 <= layer < layers for layer in scorer.layers):
        raise ArtifactError(f"scorer layers {scorer.layers} out of range 0..{layers - 1}")
    response = _load_response(header, tensors, take, layers, d, root / HEADER_FILE)
    return FittedGuard(scorer=scorer, centroids=centroids, refusal_direction=refusal,
                       refusal_source=header.get("refusal_source"), settings=settings,
                       fingerprint_parts=dict(header["fingerprint_parts"]), num_blocks=layers - 1, hidden_size=d,
                       layer_template=str(header["layer_template"]), report=dict(header.get("report", {})),
                       response=response)


def _load_response(header: dict[str, Any], tensors: dict[str, torch.Tensor], take: Callable[..., torch.Tensor],
                   layers: int, d: int, where: Path) -> ResponseScorer | None:
    """The optional response scorer of a version-2 header (None when the guard has none)."""
    config = header.get("response")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ArtifactError(f"{where}: 'response' must be an object (the response scorer's config)")
    try:
        own = {name: take(name) for name in tensors if name.startswith(ResponseScorer.tensor_prefix)}
        response = ResponseScorer.from_tensors(config, own)
        response.validate(d)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{where} has an invalid response section: {exc}") from exc
    if any(not 0 <= layer < layers for layer in response.layers):
        raise ArtifactError(f"{where}: response layers {response.layers} out of range 0..{layers - 1}")
    return response


def _check_rules(header: dict[str, Any], where: Path) -> None:
    """The position rule and the view specs the guard was fitted with are the ones this version applies.

    Headers written before the views were stored (no ``views`` key) are read with today's specs.
    """
    rule = header.get("position_rule", POSITION_RULE)
    if rule != POSITION_RULE:
        raise ArtifactError(f"{where}: the guard was fitted with the position rule {rule!r}; this latent-guardrail "
                            f"applies {POSITION_RULE!r} — recalibrate")
    specs = header.get("views")
    if specs is None:
        return
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise ArtifactError(f"{where}: 'views' must be a list of view specs")
    for spec in specs:
        try:
            known = get_view(spec.get("name"))
        except ValueError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        if spec != known.spec():
            raise ArtifactError(f"{where}: the view {known.name!r} was fitted as {spec}; this latent-guardrail "
                                f"reads it as {known.spec()} — recalibrate")


def check_fingerprint(fitted: FittedGuard, actual_parts: dict[str, str], where: str = "", *,
                      allow_weight_drift: bool = False) -> bool:
    """Check the host's identity parts against the guard's; return True when only the weights differ (drift).

    A host whose model config, tokenizer, chat template or system prompt differs is another host and is always
    refused. A host that differs in ``weights`` only is a fine-tune of the guard's host (a LoRA adapter, merged or
    not, a safety-tuned or jailbroken checkpoint): refused unless ``allow_weight_drift``, then accepted (the
    return value is True and the guard marks its verdicts ``weight_drift=True``).

    Raises:
        FingerprintMismatchError: another host (names every part that differs).
        WeightDriftError: only the weights differ and ``allow_weight_drift`` is False.
    """
    differing = sorted(key for key in set(fitted.fingerprint_parts) | set(actual_parts)
                       if fitted.fingerprint_parts.get(key) != actual_parts.get(key))
    at = f" at {where}" if where else ""
    if differing == [WEIGHTS_PART]:
        if allow_weight_drift:
            return True
        raise WeightDriftError(
            f"the guard{at} was fitted for the same model with other weights (weight drift: a fine-tune or an "
            "adapter of its host). Pass allow_weight_drift=True (CLI --allow-weight-drift, NeMo "
            "custom_data.latent_guard.allow_weight_drift) to check with it anyway — verdicts then carry "
            "weight_drift=True; measure the drift with `latent-guardrail drift`, or recalibrate for this host")
    if differing:
        raise FingerprintMismatchError(
            f"the guard{at} was fitted for another host: {', '.join(differing)} differ. Load it with the model "
            "(and system prompt) it was calibrated on, or recalibrate for this one with "
            "`latent-guardrail calibrate --model ...`"
            + (" (allow_weight_drift accepts other weights only, not another model)" if allow_weight_drift else ""))
    return False
