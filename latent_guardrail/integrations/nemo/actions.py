"""The rail's action, ``latent_guard_check_input`` (a system action; NeMo loads this file from the rail folder).

NeMo executes this file on its own (not as part of the package), hence the absolute imports.
"""

from __future__ import annotations

import logging
from typing import Any

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from latent_guardrail.integrations.nemo.rail import LatentGuardRail

__all__ = ["latent_guard_check_input"]

logger = logging.getLogger("latent_guardrail.integrations.nemo.actions")


@action(is_system_action=True, name="latent_guard_check_input")
async def latent_guard_check_input(
    text: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    llm: Any = None,
    latent_guard_rail: LatentGuardRail | None = None,
) -> RailOutcome:
    """Judge the user's message with the host's hidden states: ``RailOutcome.block`` or ``.allow``.

    Args:
        text: the message (default: ``$user_message`` from the context).
        context, config, llm: passed by NeMo.
        latent_guard_rail: the app's rail, registered by ``register(app, ...)``.
    """
    if text is None:
        text = (context or {}).get("user_message")
    if latent_guard_rail is None:
        logger.error("the latent guard rail has no guard: add latent_guardrail.integrations.nemo.rail_path() to "
                     "import_paths, or call latent_guardrail.integrations.nemo.register(app, guard)")
        return RailOutcome.block(reason="latent guard not registered",
                                 metadata={"status": "error", "error": "not_registered"})
    return await latent_guard_rail.check_input(text, config=config, llm=llm)
