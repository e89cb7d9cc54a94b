"""``LatentGuardMiddleware``: judge the user's message before a ``create_agent`` agent runs.

::

    agent = create_agent(model, tools, middleware=[LatentGuardMiddleware(guard)])
    agent = create_agent(llm, tools, middleware=[LatentGuardMiddleware.from_model(llm)])  # reuse llm's weights

A block ends the run before the first model call (``before_agent`` with ``jump_to: "end"``) with a refusal
``AIMessage`` whose ``response_metadata["latent_guard"]`` holds the verdict: zero model calls.

With ``check_output=True`` every model answer is judged too (``after_model``: the guard's response scorer, one
forward pass over the conversation + the answer's text): a harmful answer is replaced by the refusal (same message
id, its tool calls dropped; the response verdict in ``response_metadata["latent_guard_output"]``) and the run ends.
"""

from __future__ import annotations

import os
from typing import Any, Literal

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "LatentGuardMiddleware needs the langchain package: pip install 'latent-guardrail[langchain]'"
    ) from exc
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.runtime import Runtime

from ...decoding import check_max_new_tokens
from ...errors import InputError
from ...guard import LatentGuard
from ...guarded import DEFAULT_REFUSAL, LatentGuardBlocked, steered_refusal
from ...positions import Prompt
from ...streaming import call_in_thread
from ...verdict import Verdict
from .messages import METADATA_KEY, OUTPUT_METADATA_KEY, guard_for, to_prompt, verdict_metadata

__all__ = ["LatentGuardMiddleware"]


class LatentGuardMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Checks the conversation up to its last user message before the agent's first step.

    Args:
        guard: the fitted guard (for the agent's own weights, use :meth:`from_model`).
        refusal: the answer to a blocked request.
        on_block: ``"refuse"`` (answer ``refusal`` and end), ``"raise"`` (:class:`LatentGuardBlocked`), or
            ``"steer"`` (the guard's host answers in its own words under refusal-direction steering, then end).
        max_new_tokens: most tokens of a steered refusal.
        check_output: also judge each model answer (``after_model``) with the guard's response scorer.
    """

    def __init__(self, guard: LatentGuard, *, refusal: str = DEFAULT_REFUSAL,
                 on_block: Literal["refuse", "raise", "steer"] = "refuse", max_new_tokens: int = 64,
                 check_output: bool = False) -> None:
        if not isinstance(guard, LatentGuard):
            raise InputError(f"LatentGuardMiddleware needs a LatentGuard, got {type(guard).__name__}")
        if on_block not in ("refuse", "raise", "steer"):
            raise InputError(f"on_block must be 'refuse', 'raise' or 'steer', got {on_block!r}")
        check_max_new_tokens(max_new_tokens)
        if check_output:
            guard.response_threshold  # noqa: B018 - a guard without a response part: ArtifactError now
        super().__init__()
        self.check_output = bool(check_output)
        self.guard = guard
        self.refusal = refusal
        self.on_block = on_block
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_model(cls, model: Any, path: str | os.PathLike[str] = "default", **kwargs: Any) -> LatentGuardMiddleware:
        """A middleware reusing the weights of the agent's model: a :class:`GuardedChatModel`'s guard, or the
        guard saved at ``path`` loaded onto a ``ChatHuggingFace``'s model and tokenizer (no second copy)."""
        return cls(guard_for(model, path), **kwargs)

    def _blocked(self, verdict: Verdict) -> bool:
        """Whether ``verdict`` ends the run (``on_block="raise"`` raises :class:`LatentGuardBlocked` instead)."""
        if verdict.harmful and self.on_block == "raise":
            raise LatentGuardBlocked(verdict)
        return verdict.harmful

    def _steered_text(self, prompt: Prompt) -> str:
        """The host's own refusal of ``prompt`` under refusal-direction steering (a guarded generation)."""
        return steered_refusal(self.guard, prompt, max_new_tokens=self.max_new_tokens).text

    def _refusal(self, verdict: Verdict, text: str) -> dict[str, Any]:
        """The update that answers ``text`` (carrying ``verdict``) and ends the run."""
        refusal = AIMessage(content=text,
                            response_metadata={METADATA_KEY: verdict_metadata(verdict), "finish_reason": "blocked"})
        return {"messages": [refusal], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Block (refusal + jump to the end) or let the agent run."""
        prompt = to_prompt(state["messages"], trailing="drop")
        verdict = self.guard.check(prompt)
        if not self._blocked(verdict):
            return None
        return self._refusal(verdict, self._steered_text(prompt) if self.on_block == "steer" else self.refusal)

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`before_agent` without blocking the event loop: the check in the guard's worker thread
        (:meth:`LatentGuard.acheck`), a steered refusal in a worker thread of its own."""
        prompt = to_prompt(state["messages"], trailing="drop")
        verdict = await self.guard.acheck(prompt)
        if not self._blocked(verdict):
            return None
        if self.on_block != "steer":
            return self._refusal(verdict, self.refusal)
        return self._refusal(verdict, await call_in_thread(lambda _cancel: self._steered_text(prompt)))

    # ------------------------------------------------------------------ the output check
    def _answer_to_judge(self, state: AgentState[Any]) -> tuple[Prompt, AIMessage, str] | None:
        """The conversation before the last model answer, that answer and its text (None: nothing to judge)."""
        messages: list[BaseMessage] = list(state["messages"])
        if not self.check_output or not messages or not isinstance(messages[-1], AIMessage):
            return None
        answer = messages[-1]
        text = answer.text if isinstance(answer.text, str) else str(answer.text)
        if not text.strip():
            return None  # a pure tool call: no text to judge
        return to_prompt(messages[:-1], trailing="drop"), answer, text

    def _output_update(self, answer: AIMessage, verdict: Verdict) -> dict[str, Any] | None:
        if not verdict.harmful:
            return None
        if self.on_block == "raise":
            raise LatentGuardBlocked(verdict)
        replaced = AIMessage(content=self.refusal, id=answer.id,
                             response_metadata={OUTPUT_METADATA_KEY: verdict_metadata(verdict),
                                                "finish_reason": "blocked_output"})
        return {"messages": [replaced], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """With ``check_output``: replace a harmful answer with the refusal and end the run."""
        found = self._answer_to_judge(state)
        if found is None:
            return None
        prompt, answer, text = found
        return self._output_update(answer, self.guard.check_response(prompt, text))

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        """:meth:`after_model` with the forward pass in a worker thread."""
        found = self._answer_to_judge(state)
        if found is None:
            return None
        prompt, answer, text = found
        verdict = await call_in_thread(lambda _cancel: self.guard.check_response(prompt, text))
        return self._output_update(answer, verdict)
