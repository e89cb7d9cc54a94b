"""Tool turns for :class:`GuardedChatModel`: LangChain tools and messages to the core's dicts, answers back.

The rendering and parsing are the core's (:mod:`latent_guardrail.toolcalls`); this module only translates:

- tools (``BaseTool``, functions, pydantic models, JSON schemas, OpenAI dicts) → OpenAI tool dicts
  (``convert_to_openai_tool``); ``tool_choice`` (``"auto"``, ``"any"``/``"required"``/``True``, a name or
  ``{"type": "function", "function": {"name": ...}}``) → the core's None / ``"any"`` / name;
- messages → ``{"role", "content"}`` dicts with assistant ``tool_calls`` and ``tool`` results, for the answer;
- what the guard judges (:func:`judged_prompts`): the conversation up to its last user message, exactly as
  without tools; and when the conversation ends with tool results, also those results as the last user turn
  (tool output steers the next answer as much as a user would, so it is judged like one);
- a parsed answer → ``AIMessage.tool_calls`` / ``invalid_tool_calls`` (ids ``call_<hex>``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.utils.function_calling import convert_to_openai_tool

from ...errors import InputError
from ...messages import content_text, fit_roles
from ...positions import Message, Prompt
from ...toolcalls import ParsedAnswer
from .messages import to_prompt

__all__ = ["answer_messages", "format_tools", "judged_prompts", "lc_tool_calls", "needs_tool_path",
           "resolve_tool_choice", "tool_call_chunks"]


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools in the OpenAI format ``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    try:
        return [convert_to_openai_tool(tool) for tool in tools]
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise InputError(f"cannot read this tool: {exc}") from exc


def resolve_tool_choice(tool_choice: Any, names: Sequence[str]) -> str | None:
    """The core's tool choice: None (the host decides), ``"any"`` (some tool) or a tool's name.

    Raises:
        InputError: an unknown name or form (the message lists the valid ones).
    """
    if tool_choice is None or tool_choice is False or tool_choice in ("auto", "none"):
        return None
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise InputError(f"tool_choice must be 'auto', 'any', 'required', True, or one of the tools {list(names)}, "
                     f"got {tool_choice!r}")


def needs_tool_path(messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> bool:
    """Whether an answer needs the tool rendering: tools bound, a JSON answer, or tool turns in the conversation."""
    if kwargs.get("tools") or kwargs.get("json_schema") is not None or kwargs.get("json_answer"):
        return True
    return any(isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls) for m in messages)


def answer_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The conversation as the host answers it: ``{"role", "content"}`` dicts, assistant ``tool_calls`` in the
    OpenAI format (arguments as objects, as Hugging Face templates take them) and ``tool`` results.

    Raises:
        InputError: the conversation does not end with a user message or tool results.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        text = content_text(message.content)
        if isinstance(message, ToolMessage):
            out.append({"role": "tool", "content": text, "tool_call_id": message.tool_call_id,
                        "name": message.name or ""})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": text}
            if message.tool_calls:
                entry["tool_calls"] = [{"type": "function", "id": call.get("id") or "",
                                        "function": {"name": call["name"], "arguments": call["args"]}}
                                       for call in message.tool_calls]
            out.append(entry)
        else:
            role = "system" if isinstance(message, SystemMessage) else "user" if message.type in ("human", "user") \
                else message.type
            if role not in ("system", "user"):
                raise InputError(f"GuardedChatModel cannot answer a {message.type!r} message")
            out.append({"role": role, "content": text})
    if not out or out[-1]["role"] not in ("user", "tool"):
        last = out[-1]["role"] if out else "no"
        raise InputError(f"the conversation must end with a user message or tool results to be answered, got a "
                         f"{last!r} message last")
    return out


def judged_prompts(messages: Sequence[BaseMessage], render: Callable[[list[Message]], object] | None
                   ) -> list[Prompt]:
    """What the guard judges before a tool-path answer (see the module docstring): the conversation up to its
    last user message, and, when it ends with tool results, the results as the last user turn."""
    trailing = len(messages)
    while trailing > 0 and isinstance(messages[trailing - 1], ToolMessage):
        trailing -= 1
    prompts: list[Prompt] = []
    try:
        user_view = to_prompt(list(messages), trailing="drop", render=render)
    except InputError:
        if trailing == len(messages):
            raise
        user_view = None
    if user_view is not None:
        prompts.append(user_view)
    if trailing < len(messages):
        results = "\n\n".join(content_text(m.content) for m in messages[trailing:]).strip()
        if results:
            head = _as_messages(to_prompt(list(messages[:trailing]), trailing="drop")) if user_view else []
            prompts.append(fit_roles([*head, {"role": "user", "content": results}], render))
    if not prompts:
        raise InputError("the tool results are empty and there is no user turn to judge")
    return prompts


def _as_messages(prompt: Prompt) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def lc_tool_calls(parsed: ParsedAnswer) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """A parsed answer's calls as LangChain ``tool_calls`` and ``invalid_tool_calls`` (fresh ids)."""
    calls = [ToolCall(name=call.name, args=call.arguments, id=f"call_{uuid.uuid4().hex[:24]}", type="tool_call")
             for call in parsed.calls]
    invalid = [InvalidToolCall(name=item.name, args=item.raw, id=f"call_{uuid.uuid4().hex[:24]}", error=item.error,
                               type="invalid_tool_call")
               for item in parsed.invalid]
    return calls, invalid


def tool_call_chunks(calls: Sequence[ToolCall], invalid: Sequence[InvalidToolCall]) -> list[ToolCallChunk]:
    """The calls as chunks of one streamed message (what ``AIMessageChunk`` merges back into ``tool_calls``)."""
    chunks = [ToolCallChunk(name=call["name"], args=json.dumps(call["args"], ensure_ascii=False), id=call["id"],
                            index=index, type="tool_call_chunk") for index, call in enumerate(calls)]
    chunks += [ToolCallChunk(name=item["name"], args=item["args"], id=item["id"], index=len(calls) + index,
                             type="tool_call_chunk") for index, item in enumerate(invalid)]
    return chunks
