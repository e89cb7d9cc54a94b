"""``LatentGuardMiddleware``: judge the user's message before a ``create_agent`` agent runs.

::

    agent = create_agent(model, tools, middleware=[LatentGuardMiddleware(guard)])
    agent = create_agent(llm, tools, middleware=[LatentGuardMiddleware.from_model(llm)])  # reuse llm's weights

A block ends the run before the first model call (``before_agent`` with ``jump_to: "end"``) with a refusal
``AIMessage`` whose ``response_metadata["latent_guard"]`` holds the verdict: zero model calls.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "LatentGuardMiddleware needs the langchain package: pip install 'latent-guardrail[langchain]'"
    ) from exc
from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from ...errors import InputError
from ...guard import LatentGuard
from ...guarded import DEFAULT_REFUSAL, LatentGuardBlocked, steered_refusal
from .messages import METADATA_KEY, guard_for, to_prompt, verdict_metadata

__all__ = ["LatentGuardMiddleware"]


class LatentGuardMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Checks the conversation up to its last user message before the agent's first step.

    Args:
        guard: the fitted guard (for the agent's own weights, use :meth:`from_model`).
        refusal: the answer to a blocked request.
        on_block: ``"refuse"`` (answer ``refusal`` and end), ``"raise"`` (:class:`LatentGuardBlocked`), or
            ``"steer"`` (the guard's host answers in its own words under refusal-direction steering, then end).
        max_new_tokens: most tokens of a steered refusal.
    """

    def __init__(self, guard: LatentGuard, *, refusal: str = DEFAULT_REFUSAL,
                 on_block: Literal["refuse", "raise", "steer"] = "refuse", max_new_tokens: int = 64) -> None:
        if not isinstance(guard, LatentGuard):
            raise InputError(f"LatentGuardMiddleware needs a LatentGuard, got {type(guard).__name__}")
        if on_block not in ("refuse", "raise", "steer"):
            raise InputError(f"on_block must be 'refuse', 'raise' or 'steer', got {on_block!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        super().__init__()
        self.guard = guard
        self.refusal = refusal
        self.on_block = on_block
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_model(cls, model: Any, path: str | os.PathLike[str] = "default", **kwargs: Any) -> LatentGuardMiddleware:
        """A middleware reusing the weights of the agent's model: a :class:`GuardedChatModel`'s guard, or the
        guard saved at ``path`` loaded onto a ``ChatHuggingFace``'s model and tokenizer (no second copy)."""
        return cls(guard_for(model, path), **kwargs)

    def _judge(self, state: AgentState[Any]) -> dict[str, Any] | None:
        prompt = to_prompt(state["messages"], trailing="drop")
        verdict = self.guard.check(prompt)
        if not verdict.harmful:
            return None
        if self.on_block == "raise":
            raise LatentGuardBlocked(verdict)
        text = self.refusal
        if self.on_block == "steer":
            text = steered_refusal(self.guard, prompt, max_new_tokens=self.max_new_tokens).text
        refusal = AIMessage(content=text,
                            response_metadata={METADATA_KEY: verdict_metadata(verdict), "finish_reason": "blocked"})
        return {"messages": [refusal], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Block (refusal + jump to the end) or let the agent run."""
        return self._judge(state)

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`before_agent` with the model work in a worker thread."""
        return await asyncio.to_thread(self._judge, state)
