"""Settings of the latent guard rail, read from ``custom_data.latent_guard`` of a NeMo Guardrails config.

NeMo 0.24 builds the schema of ``rails.config`` from its built-in rails only and drops unknown keys, so the rail
reads its own section of ``custom_data`` and validates it here (``extra="forbid"``: a typo is an error)::

    custom_data:
      latent_guard:
        guard: default          # or a folder written by `latent-guardrail calibrate -o FOLDER`
        host: null              # host model of that folder: HF id, local path or .gguf (null = the default host)
        threshold: null         # override of the fitted threshold
        response_threshold: null  # override of the response scorer's threshold (flow `latent guard check output`)
        mode: auto              # auto | check | shared (see below)
        on_error: block         # block | allow: what an internal failure of the guard does
        on_block: refuse        # refuse (the flow's canned refusal) | steer (the host refuses in its own words)
        batch_window_ms: 2.0    # concurrent standalone checks share one check_batch (gathered for this long)
        max_batch: 32           # most checks per check_batch (1 = no batching)
        allow_weight_drift: false  # accept a fine-tune of the guard's host (verdicts carry weight_drift: true)

``mode``: ``check`` runs a standalone early-exit check; ``shared`` (``passthrough: true`` and the
``latent_guardrail`` main LLM on the same host) judges and answers in **one** prefill; ``auto`` shares when it can.
Standalone checks go through a :class:`~latent_guardrail.microbatch.MicroBatcher`: the checks of concurrent
requests (e.g. under ``nemoguardrails server``) are judged together in one ``check_batch``, verdicts unchanged.

NeMo loads this file on its own when the rail folder is in ``import_paths`` and calls :func:`init` while
``LLMRails`` is being created, so every configuration error surfaces there, not at the first request. That is
also why this file imports only absolute names. The settings themselves live in
:mod:`latent_guardrail.integrations.nemo.loading` (re-exported here), so the rail never imports this file.
"""

from __future__ import annotations

from typing import Any

from latent_guardrail.integrations.nemo.loading import SETTINGS_KEY, LatentGuardRailSettings
from latent_guardrail.integrations.nemo.rail import register

__all__ = ["SETTINGS_KEY", "LatentGuardRailSettings", "init"]


def init(app: Any) -> None:
    """Called by NeMo when this folder is in ``import_paths``: validate the settings, load the guard, register the
    rail's action and the ``latent_guardrail`` LLM provider (before NeMo creates its models)."""
    register(app)
