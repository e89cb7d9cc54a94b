"""The rail's actions, ``latent_guard_check_input`` and ``latent_guard_check_output`` (system actions; NeMo loads
this file from the rail folder).

NeMo executes this file on its own (not as part of the package), hence the absolute imports. The action needs
only something with ``check_input`` (:class:`InputRail`; the app's
:class:`~latent_guardrail.integrations.nemo.rail.LatentGuardRail`), so this file imports nothing of the rail and
the rail imports it (to register the action under :data:`ACTION_NAME` with the rail as :data:`RAIL_PARAM`).

Streamed output rails (``rails.output.streaming``) do not run the flow: NeMo 0.24's
``LLMRails._run_output_rails_in_streaming`` calls the flow's action itself, once per buffered chunk, with a fixed
set of keywords (``context`` holding the chunk as ``bot_message``, ``config``, ``llm``, ``llm_task_manager``,
``model_name``, ``llms``) and without the app's registered action parameters. The output action therefore takes
any further keyword (``**nemo_params``), and the rail registers :func:`bind_output_action`'s copy that carries the
rail itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

__all__ = ["ACTION_NAME", "OUTPUT_ACTION_NAME", "RAIL_PARAM", "InputRail", "OutputRail", "bind_output_action",
           "latent_guard_check_input", "latent_guard_check_output"]

logger = logging.getLogger("latent_guardrail.integrations.nemo.actions")

ACTION_NAME = "latent_guard_check_input"
"""The action's name in the flows."""
OUTPUT_ACTION_NAME = "latent_guard_check_output"
"""The output action's name in the flows."""
RAIL_PARAM = "latent_guard_rail"
"""Name of the action parameter through which NeMo hands the app's rail to the action."""


class InputRail(Protocol):
    """What the action calls: the app's rail (:class:`~latent_guardrail.integrations.nemo.rail.LatentGuardRail`)."""

    async def check_input(self, text: Any, *, config: Any = None, llm: Any = None) -> RailOutcome:
        """Judge the user's message; never raises."""
        ...


class OutputRail(Protocol):
    """What the output action calls: the app's rail."""

    async def check_output(self, text: Any, user_text: Any, *, config: Any = None, llm: Any = None) -> RailOutcome:
        """Judge the bot's answer ``text`` to the user's ``user_text``; never raises."""
        ...


@action(is_system_action=True, name=ACTION_NAME)
async def latent_guard_check_input(
    text: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    llm: Any = None,
    latent_guard_rail: InputRail | None = None,
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


@action(is_system_action=True, name=OUTPUT_ACTION_NAME)
async def latent_guard_check_output(
    text: str | None = None,
    user_text: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    llm: Any = None,
    latent_guard_rail: OutputRail | None = None,
    **nemo_params: Any,
) -> RailOutcome:
    """Judge the bot's answer from the host's states at the answer's tokens: ``RailOutcome.block`` or ``.allow``.

    Args:
        text: the answer (default: ``$bot_message`` from the context; in a streamed output rail, the buffered
            chunk with its context).
        user_text: the user's message it answers (default: ``$user_message``).
        context, config, llm: passed by NeMo.
        latent_guard_rail: the app's rail, registered by ``register(app, ...)``.
        nemo_params: what else NeMo's streamed output rails pass (``llm_task_manager``, ``model_name``,
            ``llms``); unused.
    """
    if text is None:
        text = (context or {}).get("bot_message")
    if user_text is None:
        user_text = (context or {}).get("user_message")
    if latent_guard_rail is None:
        logger.error("the latent guard rail has no guard: add latent_guardrail.integrations.nemo.rail_path() to "
                     "import_paths, or call latent_guardrail.integrations.nemo.register(app, guard)")
        return RailOutcome.block(reason="latent guard not registered",
                                 metadata={"status": "error", "error": "not_registered"})
    return await latent_guard_rail.check_output(text, user_text, config=config, llm=llm)


def bind_output_action(rail: OutputRail) -> Callable[..., Awaitable[RailOutcome]]:
    """The output action with ``rail`` bound: what ``register(app, ...)`` registers as :data:`OUTPUT_ACTION_NAME`.

    NeMo's streamed output rails never pass the registered action parameters (see the module docstring), so the
    rail travels with the action; the flow's path (Colang 1.0 and 2.x) calls the same function.
    """

    @action(is_system_action=True, name=OUTPUT_ACTION_NAME)
    async def latent_guard_check_output_bound(
        text: str | None = None,
        user_text: str | None = None,
        context: dict[str, Any] | None = None,
        config: Any = None,
        llm: Any = None,
        **nemo_params: Any,
    ) -> RailOutcome:
        """Judge the bot's answer with the bound rail (:func:`latent_guard_check_output`)."""
        return await latent_guard_check_output(text, user_text, context, config, llm, latent_guard_rail=rail)

    return latent_guard_check_output_bound
