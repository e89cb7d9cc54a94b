"""``GuardedChatModel``: a LangChain chat model over a guard's host whose verdict and answer share one prefill.

::

    llm = GuardedChatModel(guard, max_new_tokens=128)
    message = llm.invoke("How do I kill a stuck process?")
    message.content, verdict_of(message)                  # the answer, and the verdict it passed
    for chunk in llm.stream(prompt):                      # the first chunk carries the verdict, before any token
        ...

A blocked prompt stops its forward pass at the last layer the guard reads and is answered with ``refusal``
(``finish_reason="blocked"``; ``on_block="raise"`` raises :class:`LatentGuardBlocked` instead; ``on_block="steer"``
answers with the host's own words, steered along the guard's refusal direction). Async methods
run the whole generation in one worker thread (the host lock is held by that thread); cancelling an ``astream``
or ``ainvoke`` stops decoding at the next token.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import closing
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from ...errors import InputError
from ...guard import LatentGuard
from ...guarded import DEFAULT_REFUSAL, GuardedChunk, GuardedEvent, GuardedResult, Usage, guarded_stream
from ...streaming import call_in_thread, drain, iterate_in_thread
from ...verdict import Verdict
from .messages import METADATA_KEY, to_prompt, verdict_metadata

__all__ = ["GuardedChatModel"]

_CALL_OPTIONS = ("max_new_tokens", "temperature", "seed")


def _usage(usage: Usage) -> UsageMetadata:
    return UsageMetadata(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         total_tokens=usage.total_tokens)


class GuardedChatModel(BaseChatModel):
    """A chat model over ``guard.host`` (the default model or any HF causal LM) guarded in its own prefill.

    Per call, ``max_new_tokens``, ``temperature`` and ``seed`` may be passed as keyword arguments (or bound with
    ``.bind(...)``); ``stop`` sequences end the answer. ``response_metadata["latent_guard"]`` holds the verdict
    (read it back with ``verdict_of(message)``); ``usage_metadata`` the token counts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: LatentGuard = Field(exclude=True, description="The fitted guard; its host generates the answers.")
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=100.0, description="0 = greedy; else sampling temperature.")
    seed: int | None = Field(default=None, ge=0, description="Sampler seed (temperature > 0).")
    on_block: Literal["refuse", "raise", "steer"] = Field(
        default="refuse", description="On a block: answer `refusal`, raise LatentGuardBlocked, or let the host "
                                      "refuse in its own words under refusal-direction steering.")
    refusal: str = Field(default=DEFAULT_REFUSAL, description="The answer to a blocked prompt.")

    def __init__(self, guard: LatentGuard, **kwargs: Any) -> None:
        if not isinstance(guard, LatentGuard):
            raise InputError(f"GuardedChatModel needs a LatentGuard, got {type(guard).__name__}")
        super().__init__(guard=guard, **kwargs)  # type: ignore[call-arg]

    @property
    def _llm_type(self) -> str:
        return "latent-guardrail"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.guard.host.name, "guard": self.guard.fingerprint,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    # ------------------------------------------------------------------ core
    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = [key for key in kwargs if key not in _CALL_OPTIONS and not key.startswith("ls_")]
        if unknown:
            raise InputError(f"GuardedChatModel does not take {', '.join(sorted(unknown))}; per-call options are "
                             f"{', '.join(_CALL_OPTIONS)} and stop")
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                   "seed": self.seed}
        options.update({key: kwargs[key] for key in _CALL_OPTIONS if kwargs.get(key) is not None})
        return {**options, "stop": stop, "on_block": self.on_block, "refusal": self.refusal}

    def _events(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                cancel: threading.Event | None = None) -> Generator[GuardedEvent, None, None]:
        prompt = to_prompt(messages, trailing="error")
        return guarded_stream(self.guard, prompt, cancel=cancel, **self._options(stop, kwargs))

    def _first_chunk(self, verdict: Verdict) -> ChatGenerationChunk:
        metadata = {METADATA_KEY: verdict_metadata(verdict), "model_name": self.guard.host.name}
        return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=metadata))

    def _last_chunk(self, result: GuardedResult) -> ChatGenerationChunk:
        metadata = {"finish_reason": result.finish_reason, "blocked": result.blocked}
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata=metadata, usage_metadata=_usage(result.usage),
                                   chunk_position="last"),
            generation_info={"finish_reason": result.finish_reason})

    def _chunks(self, events: Generator[GuardedEvent, None, None]) -> Iterator[ChatGenerationChunk]:
        with closing(events):
            for event in events:
                if isinstance(event, Verdict):
                    yield self._first_chunk(event)
                elif isinstance(event, GuardedChunk):
                    if event.text:
                        yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))
                else:
                    yield self._last_chunk(event)

    def _run(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
             cancel: threading.Event | None = None) -> ChatResult:
        result = drain(self._events(messages, stop, kwargs, cancel), GuardedResult, "guarded generation")
        metadata = {METADATA_KEY: verdict_metadata(result.verdict), "model_name": self.guard.host.name,
                    "finish_reason": result.finish_reason, "blocked": result.blocked}
        message = AIMessage(content=result.text, response_metadata=metadata, usage_metadata=_usage(result.usage))
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": result.finish_reason})])

    # ------------------------------------------------------------------ BaseChatModel hooks
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._run(messages, stop, kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # cancelled while the thread still decodes: call_in_thread sets cancel, decoding stops at the next token
        return await call_in_thread(lambda cancel: self._run(messages, stop, kwargs, cancel))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._events(messages, stop, kwargs)):
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(lambda cancel: self._chunks(self._events(messages, stop, kwargs, cancel))):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
