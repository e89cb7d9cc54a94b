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

With ``check_output=True`` the answer is judged too while it streams (the guard's response scorer, on the states
the decoding steps compute: no extra pass); a harmful answer stops and ends with ``refusal``
(``finish_reason="blocked_output"``); the response verdict is in ``response_metadata["latent_guard_output"]``
(``output_verdict_of(message)``) of the message, or of the last chunk when streaming.

Tools, agents and structured output::

    agent = create_agent(GuardedChatModel(guard), tools=[get_weather])
    llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?").tool_calls
    llm.with_structured_output(Joke, method="json_schema").invoke("Tell me a joke")

With tools bound, a JSON answer asked for, or tool turns in the conversation, the answer prompt is rendered by
:func:`latent_guardrail.toolcalls.render_tool_prompt` (the host's template with ``tools=``; what it cannot show
in the Hermes format) and the calls are parsed from the answer into ``AIMessage.tool_calls``. **What the guard
judges there**: the conversation up to its last user message, exactly as without tools (the tool definitions
are not part of what it reads), and, when the conversation ends with tool results, those results as the last
user turn too; either blocking blocks (a blocked answer never carries tool calls). That costs one check pass
plus the answer's own prefill (the answer prompt is not the text the guard reads), and the answer streams as
one chunk at its end (the calls must be read whole).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import closing
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import AliasChoices, ConfigDict, Field

from ...errors import InputError
from ...guard import LatentGuard
from ...guarded import (
    DEFAULT_REFUSAL,
    GuardedChunk,
    GuardedEvent,
    GuardedResult,
    Usage,
    guarded_stream,
    judged_stream,
)
from ...streaming import call_in_thread, drain, iterate_in_thread
from ...toolcalls import ParsedAnswer, ToolPrompt, parse_tool_calls, render_tool_prompt, tool_names
from ...verdict import Verdict
from .messages import METADATA_KEY, OUTPUT_METADATA_KEY, template_render, to_prompt, verdict_metadata
from .tools import (
    answer_messages,
    format_tools,
    judged_prompts,
    lc_tool_calls,
    needs_tool_path,
    resolve_tool_choice,
    tool_call_chunks,
)

__all__ = ["GuardedChatModel"]

_CALL_OPTIONS = ("max_new_tokens", "temperature", "seed")
_TOOL_OPTIONS = ("tools", "tool_choice", "json_schema", "json_answer")
_IGNORED = ("ls_structured_output_format",)  # tracing metadata LangChain passes along with a structured call


def _usage(usage: Usage) -> UsageMetadata:
    return UsageMetadata(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         total_tokens=usage.total_tokens)


class GuardedChatModel(BaseChatModel):
    """A chat model over ``guard.host`` (the default model or any HF causal LM) guarded in its own prefill.

    Per call, ``max_new_tokens``, ``temperature`` and ``seed`` may be passed as keyword arguments (or bound with
    ``.bind(...)``); ``stop`` sequences end the answer. ``response_metadata["latent_guard"]`` holds the verdict
    (read it back with ``verdict_of(message)``); ``usage_metadata`` the token counts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    guard: LatentGuard = Field(exclude=True, description="The fitted guard; its host generates the answers.")
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description="Most tokens generated per answer "
                                "(LangChain's standard name `max_tokens` is accepted too).",
                                validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    stop: list[str] | None = Field(default=None, description="Stop sequences of every call (a call's own `stop` "
                                                              "is added to them).")
    temperature: float = Field(default=0.0, ge=0.0, le=100.0, description="0 = greedy; else sampling temperature.")
    seed: int | None = Field(default=None, ge=0, description="Sampler seed (temperature > 0).")
    on_block: Literal["refuse", "raise", "steer"] = Field(
        default="refuse", description="On a block: answer `refusal`, raise LatentGuardBlocked, or let the host "
                                      "refuse in its own words under refusal-direction steering.")
    refusal: str = Field(default=DEFAULT_REFUSAL, description="The answer to a blocked prompt.")
    check_output: bool = Field(default=False, description="Also judge the answer while it is generated (the guard's "
                                                          "response scorer, no extra pass); a harmful answer stops "
                                                          "with `refusal` (finish_reason 'blocked_output').")

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

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith's standard params: provider, model name (a per-call ``model`` wins, for traces only),
        type, temperature, max tokens and stop sequences of the call."""
        params = LangSmithParams(ls_provider="latent_guardrail", ls_model_type="chat",
                                 ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str)
                                 else self.guard.host.name)
        temperature = kwargs.get("temperature")
        params["ls_temperature"] = float(temperature if temperature is not None else self.temperature)
        limit = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        params["ls_max_tokens"] = limit if isinstance(limit, int) else self.max_new_tokens
        stops = self._stops(stop)
        if stops:
            params["ls_stop"] = stops
        return params

    # ------------------------------------------------------------------ core
    def _stops(self, stop: list[str] | None) -> list[str] | None:
        stops = [*(self.stop or ()), *(stop or ())]
        return list(dict.fromkeys(stops)) or None

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = [key for key in kwargs
                   if key not in (*_CALL_OPTIONS, *_TOOL_OPTIONS, *_IGNORED) and not key.startswith("ls_")]
        if unknown:
            raise InputError(f"GuardedChatModel does not take {', '.join(sorted(unknown))}; per-call options are "
                             f"{', '.join(_CALL_OPTIONS)} and stop (tools through bind_tools, JSON answers through "
                             "with_structured_output)")
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                   "seed": self.seed}
        options.update({key: kwargs[key] for key in _CALL_OPTIONS if kwargs.get(key) is not None})
        return {**options, "stop": self._stops(stop), "on_block": self.on_block, "refusal": self.refusal,
                "check_output": self.check_output}

    def _events(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                cancel: threading.Event | None = None) -> Generator[GuardedEvent, None, None]:
        prompt = to_prompt(messages, trailing="error", render=template_render(self.guard))
        return guarded_stream(self.guard, prompt, cancel=cancel, **self._options(stop, kwargs))

    def _tool_events(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                     cancel: threading.Event | None = None
                     ) -> tuple[ToolPrompt, tuple[str, ...], Generator[GuardedEvent, None, None]]:
        """The tool path (see the module docstring): the answer prompt, the tools' names and the events."""
        options = self._options(stop, kwargs)
        tools = list(kwargs.get("tools") or ())
        names = tool_names(tools)
        choice = resolve_tool_choice(kwargs.get("tool_choice"), names) if tools else None
        host = self.guard.host
        judged = judged_prompts(messages, template_render(self.guard))
        prompt = render_tool_prompt(host.tokenizer, answer_messages(messages), tools, tool_choice=choice,
                                    json_schema=kwargs.get("json_schema"), json_answer=bool(kwargs.get("json_answer")))
        input_ids = list(host.tokenizer(prompt.text, add_special_tokens=False)["input_ids"])
        if host.max_positions is not None and len(input_ids) >= host.max_positions:
            raise InputError(f"the answer prompt (tools included) has {len(input_ids)} tokens; the host takes "
                             f"{host.max_positions}")
        return prompt, names, judged_stream(self.guard, judged, input_ids, cancel=cancel, **options)

    def _answer(self, result: GuardedResult, prompt: ToolPrompt, names: Sequence[str]) -> ParsedAnswer:
        """The answer's text and calls (a blocked answer, input or output, is its refusal, never a call)."""
        if result.blocked:
            return ParsedAnswer(text=result.text)
        text = prompt.forced + result.text
        return parse_tool_calls(text, names) if names else ParsedAnswer(text=text.strip())

    def _tool_chunks(self, prompt: ToolPrompt, names: Sequence[str],
                     events: Generator[GuardedEvent, None, None]) -> Iterator[ChatGenerationChunk]:
        with closing(events):
            for event in events:
                if isinstance(event, Verdict):
                    yield self._first_chunk(event)
                elif isinstance(event, GuardedResult):
                    answer = self._answer(event, prompt, names)
                    calls, invalid = lc_tool_calls(answer)
                    yield ChatGenerationChunk(message=AIMessageChunk(
                        content=answer.text, tool_call_chunks=tool_call_chunks(calls, invalid)))
                    yield self._last_chunk(event)

    def _first_chunk(self, verdict: Verdict) -> ChatGenerationChunk:
        metadata = {METADATA_KEY: verdict_metadata(verdict), "model_name": self.guard.host.name}
        return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=metadata))

    def _last_chunk(self, result: GuardedResult) -> ChatGenerationChunk:
        metadata: dict[str, Any] = {"finish_reason": result.finish_reason, "blocked": result.blocked}
        if result.output_verdict is not None:
            metadata[OUTPUT_METADATA_KEY] = verdict_metadata(result.output_verdict)
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

    def _stream_chunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                       cancel: threading.Event | None = None) -> Iterator[ChatGenerationChunk]:
        if needs_tool_path(messages, kwargs):
            return self._tool_chunks(*self._tool_events(messages, stop, kwargs, cancel))
        return self._chunks(self._events(messages, stop, kwargs, cancel))

    def _run(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
             cancel: threading.Event | None = None) -> ChatResult:
        answer: ParsedAnswer | None = None
        if needs_tool_path(messages, kwargs):
            prompt, names, events = self._tool_events(messages, stop, kwargs, cancel)
            result = drain(events, GuardedResult, "guarded generation")
            answer = self._answer(result, prompt, names)
        else:
            result = drain(self._events(messages, stop, kwargs, cancel), GuardedResult, "guarded generation")
        metadata = {METADATA_KEY: verdict_metadata(result.verdict), "model_name": self.guard.host.name,
                    "finish_reason": result.finish_reason, "blocked": result.blocked}
        if result.output_verdict is not None:
            metadata[OUTPUT_METADATA_KEY] = verdict_metadata(result.output_verdict)
        if answer is None:
            message = AIMessage(content=result.text, response_metadata=metadata, usage_metadata=_usage(result.usage))
        else:
            calls, invalid = lc_tool_calls(answer)
            message = AIMessage(content=answer.text, tool_calls=calls, invalid_tool_calls=invalid,
                                response_metadata=metadata, usage_metadata=_usage(result.usage))
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
        for chunk in self._stream_chunks(messages, stop, kwargs):
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(lambda cancel: self._stream_chunks(messages, stop, kwargs, cancel)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # ------------------------------------------------------------------ tools and structured output
    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` (LangChain tools, functions, pydantic models, JSON schemas or OpenAI dicts).

        ``tool_choice``: None/``"auto"`` (the host decides), ``"any"``/``"required"``/``True`` (a call is forced:
        its start is written into the answer) or a tool's name (that call forced).

        Raises:
            InputError: an unreadable tool or an unknown ``tool_choice``.
        """
        formatted = format_tools(tools)
        names = tool_names(formatted)
        if tool_choice is not None:
            resolve_tool_choice(tool_choice, names)  # fail now, not at the first call
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict[str, Any] | type, *, include_raw: bool = False,
                               method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
                               strict: bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into ``schema`` (a pydantic model, a TypedDict or a JSON schema dict).

        ``method``: ``"function_calling"`` (a forced call of one tool shaped like the schema), ``"json_schema"``
        (the schema in the system message, the answer forced to start with ``{``), ``"json_mode"`` (any JSON
        object; the prompt says which keys). ``strict`` is accepted and not enforced (no constrained decoding):
        an answer that does not parse raises ``OutputParserException`` (or, with ``include_raw``, is returned
        as ``{"raw", "parsed": None, "parsing_error"}``).
        """
        if kwargs:
            raise InputError(f"with_structured_output does not take {', '.join(sorted(kwargs))}")
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise InputError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        pydantic_schema = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        llm: Runnable[LanguageModelInput, Any]
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = format_tools([schema])[0]["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
            if pydantic_schema:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        else:
            answer = {"json_schema": convert_to_json_schema(schema)} if method == "json_schema" \
                else {"json_answer": True}
            llm = self.bind(ls_structured_output_format=trace, **answer)
            if pydantic_schema:
                parser = PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
            else:
                parser = JsonOutputParser()
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
