"""Settings of the latent guard rail, read from ``custom_data.latent_guard`` of a NeMo Guardrails config.

NeMo 0.24 builds the schema of ``rails.config`` from its built-in rails only and drops unknown keys, so the rail
reads its own section of ``custom_data`` and validates it here (``extra="forbid"``: a typo is an error)::

    custom_data:
      latent_guard:
        guard: default          # or a folder written by `latent-guardrail calibrate -o FOLDER`
        host: null              # host model of that folder: HF id, local path or .gguf (null = the default host)
        threshold: null         # override of the fitted threshold
        mode: auto              # auto | check | shared (see below)
        on_error: block         # block | allow: what an internal failure of the guard does
        on_block: refuse        # refuse (the flow's canned refusal) | steer (the host refuses in its own words)

``mode``: ``check`` runs a standalone early-exit check; ``shared`` (``passthrough: true`` and the
``latent_guardrail`` main LLM on the same host) judges and answers in **one** prefill; ``auto`` shares when it can.

NeMo loads this file on its own when the rail folder is in ``import_paths`` and calls :func:`init` while
``LLMRails`` is being created, so every configuration error surfaces there, not at the first request. That is
also why this file imports only absolute names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["SETTINGS_KEY", "LatentGuardRailSettings", "init"]

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

    @classmethod
    def from_custom_data(cls, custom_data: Mapping[str, Any] | None) -> LatentGuardRailSettings:
        """Validate ``custom_data[SETTINGS_KEY]`` (missing = all defaults).

        Raises:
            NemoConfigError: not a mapping, an unknown key, or a bad value (the message names each one).
        """
        from latent_guardrail.integrations.nemo.loading import NemoConfigError

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


def init(app: Any) -> None:
    """Called by NeMo when this folder is in ``import_paths``: validate the settings, load the guard, register the
    rail's action and the ``latent_guardrail`` LLM provider (before NeMo creates its models)."""
    from latent_guardrail.integrations.nemo.rail import register

    register(app)
