"""Installs the latent guard rail and the ``latent_guardrail`` LLM provider when NeMo creates ``LLMRails``."""

from typing import Any

from latent_guardrail.integrations.nemo import register


def init(app: Any) -> None:
    """Validate ``custom_data.latent_guard``, load the guard, register the rail's action and the provider."""
    register(app)
