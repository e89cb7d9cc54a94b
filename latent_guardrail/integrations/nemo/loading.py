"""The rail's configuration and its guard: :class:`LatentGuardRailSettings` and :func:`shared_guard`.

:class:`LatentGuardRailSettings` validates ``custom_data.latent_guard`` (the keys are documented in
:mod:`latent_guardrail.integrations.nemo.config`, the file NeMo loads); every problem is a
:class:`NemoConfigError`.

Guards are loaded once per process: the rail and the ``latent_guardrail`` main LLM share one host.

Both :func:`~latent_guardrail.integrations.nemo.register` (reading ``custom_data.latent_guard``) and the
``latent_guardrail`` LLM provider (reading ``models[].parameters``) ask :func:`shared_guard` for their guard. Equal
specs give the **same** :class:`~latent_guardrail.LatentGuard` object — one copy of the model in memory, one lock,
and the passthrough rail can hand its prefill to the main LLM. The table holds weak references: a guard nobody
uses any more is freed.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latent_guardrail.errors import LatentGuardError
from latent_guardrail.guard import DEFAULT_GUARD, LatentGuard
from latent_guardrail.hosts import DEFAULT_MODEL
from latent_guardrail.microbatch import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_MS, MaxBatch, WindowMs

__all__ = ["SETTINGS_KEY", "LatentGuardRailSettings", "NemoConfigError", "guard_key", "resolve_guard_path",
           "shared_guard"]


class NemoConfigError(LatentGuardError, ValueError):
    """The NeMo configuration of the latent guard is wrong (raised while ``LLMRails`` is being created)."""


SETTINGS_KEY = "latent_guard"
"""The key under ``custom_data`` that holds the rail's settings."""


class LatentGuardRailSettings(BaseModel):
    """``custom_data.latent_guard``: which guard the rail loads and what it does with its verdicts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    guard: str | None = Field(
        default="default", min_length=1,
        description="'default' (the default host's guard), a guard artifact folder (relative paths are looked up in "
                    "the config folder, then the working directory), or null when the guard is given in code with "
                    "register(app, guard).")
    host: str | None = Field(
        default=None, min_length=1,
        description="Host model of an artifact folder: HF id, local folder or .gguf file (null = the default host).")
    threshold: float | None = Field(
        default=None, allow_inf_nan=False, description="Override of the fitted threshold (null = fitted).")
    response_threshold: float | None = Field(
        default=None, allow_inf_nan=False,
        description="Override of the response scorer's threshold for `latent guard check output` (null = fitted).")
    category_policy: dict[str, Literal["block", "allow", "monitor"]] = Field(
        default_factory=dict,
        description="Per risk category: block (default), allow or monitor (GuardSettings.category_policy).")
    category_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per risk category: its own threshold (GuardSettings.category_thresholds).")
    mode: Literal["auto", "check", "shared"] = Field(
        default="auto",
        description="check: a standalone early-exit check; shared: with passthrough and the latent_guardrail main "
                    "LLM, the check and the answer share one prefill; auto: shared when possible, else check.")
    on_error: Literal["block", "allow"] = Field(
        default="block", description="What an internal failure of the guard does (never cached).")
    on_block: Literal["refuse", "steer"] = Field(
        default="refuse",
        description="refuse: the flow's refusal ('bot refuse to respond'); steer: the host writes its own refusal "
                    "with the refusal direction added (a second pass, for blocked prompts only).")
    steer_max_new_tokens: int = Field(
        default=64, ge=1, le=4096,
        description="Most tokens of a steered refusal (check mode; a shared prefill uses the answer's budget).")
    batch_window_ms: WindowMs = Field(
        default=DEFAULT_WINDOW_MS,
        description="Standalone checks of concurrent requests share one check_batch: a batch waits this long from "
                    "its first check for more (0 = only the checks that queued while the host was busy).")
    max_batch: MaxBatch = Field(default=DEFAULT_MAX_BATCH,
                                description="Most concurrent checks judged in one check_batch (1 = every check alone).")
    allow_weight_drift: bool = Field(
        default=False, description="Accept a host that is the guard's model with other weights (a fine-tune, a PEFT "
                                   "adapter folder as host); its verdicts carry weight_drift=true. Another model is "
                                   "refused anyway (GuardSettings.allow_weight_drift).")

    @classmethod
    def from_custom_data(cls, custom_data: Mapping[str, Any] | None) -> LatentGuardRailSettings:
        """Validate ``custom_data[SETTINGS_KEY]`` (missing = all defaults).

        Raises:
            NemoConfigError: not a mapping, an unknown key, or a bad value (the message names each one).
        """
        raw = (custom_data or {}).get(SETTINGS_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise NemoConfigError(f"custom_data.{SETTINGS_KEY} must be a mapping of settings, got "
                                  f"{type(raw).__name__}; valid keys: {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or SETTINGS_KEY}: {error['msg']}"
                for error in exc.errors())
            raise NemoConfigError(f"custom_data.{SETTINGS_KEY} is invalid: {problems} "
                                  f"(valid keys: {', '.join(cls.model_fields)})") from None


_GUARDS: weakref.WeakValueDictionary[tuple[str, str], LatentGuard] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # serialises loads: two apps created at once load a host once


def resolve_guard_path(guard: str, base: str | os.PathLike[str] | None = None) -> str:
    """``"default"``, or the absolute path of a guard artifact folder (a relative path is looked up in ``base``
    first — the NeMo config folder —, then in the working directory).

    Raises:
        NemoConfigError: the folder does not exist or holds no ``guard.json``.
    """
    if guard == DEFAULT_GUARD:
        return guard
    candidates = [Path(guard).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.insert(0, Path(base) / guard)
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / "guard.json").is_file():
                raise NemoConfigError(
                    f"custom_data.latent_guard.guard: {str(candidate)!r} holds no guard.json; give 'default' or a "
                    "folder written by `latent-guardrail calibrate -o FOLDER` (guard.json + tensors.safetensors)")
            return str(candidate.resolve())
    looked = " or ".join(repr(str(candidate)) for candidate in candidates)
    raise NemoConfigError(
        f"custom_data.latent_guard.guard: no guard artifact folder at {looked}; give 'default' or a folder written "
        "by `latent-guardrail calibrate -o FOLDER`")


def guard_key(guard: str, host: str | None) -> tuple[str, str]:
    """The identity of a (guard, host) pair in the shared table: the resolved guard spec and the host spec."""
    return guard, DEFAULT_MODEL if host is None else str(host)


def shared_guard(guard: str, host: str | None = None, *, allow_weight_drift: bool = False) -> LatentGuard:
    """The process-wide guard for ``guard`` (``"default"`` or a resolved artifact folder) on ``host``.

    ``allow_weight_drift`` accepts a fine-tune of the guard's host; a caller without it never gets a guard that
    was loaded onto drifted weights.

    Raises:
        NemoConfigError: the artifact cannot be loaded or does not fit the host (the cause is chained).
    """
    key = guard_key(guard, host)
    with _LOCK:
        found = _GUARDS.get(key)
        if found is not None:
            if found.weight_drift and not allow_weight_drift:
                raise NemoConfigError(f"the latent guard {guard!r} runs on host {key[1]!r} with weight drift (other "
                                      "weights than it was fitted on); set custom_data.latent_guard."
                                      "allow_weight_drift: true to use it")
            return found
        try:
            loaded = LatentGuard.load(guard, host=key[1], progress=False, allow_weight_drift=allow_weight_drift)
        except LatentGuardError as exc:
            raise NemoConfigError(f"cannot load the latent guard {guard!r} on host {key[1]!r}: {exc}") from exc
        _GUARDS[key] = loaded
        return loaded
