"""Installs the latent guard rail and the ``latent_guardrail`` LLM provider when NeMo creates ``LLMRails``."""

from latent_guardrail.integrations.nemo import register


def init(app):  # noqa: ANN001, ANN201 - NeMo's config.py hook
    """Validate ``custom_data.latent_guard``, load the guard, register the rail's action and the provider."""
    register(app)
