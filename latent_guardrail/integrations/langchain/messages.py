"""Translate LangChain inputs to the guard's prompts, verdicts to metadata, and LangChain hosts to ``Host``.

Conversion rules (each bad case is an :class:`~latent_guardrail.InputError`, never a silent pass):

- a ``str`` is one user message; a ``PromptValue`` or a ``BaseMessage`` becomes its messages; a sequence is
  converted with ``convert_to_messages`` (messages, ``("user", "...")`` tuples, ``{"role", "content"}`` dicts);
- human → ``user``, AI → ``assistant``, system → ``system`` (the core's
  :func:`~latent_guardrail.messages.guard_role`); tool messages are left out (tool output is not a user
  instruction) and so are AI messages with no text (tool calls only);
- content parts: the text parts are joined (:func:`~latent_guardrail.messages.content_text`); images and other
  parts are ignored; a last user message with no text at all is an error (the guard reads text);
- ``trailing="drop"`` judges the conversation up to its last user message (a guard checking an agent's state);
  ``trailing="error"`` requires the conversation to end with a user message (a chat model answering it);
- repeated roles (two system, user or AI messages in a row) go through the core's
  :func:`~latent_guardrail.messages.fit_roles`: leading system messages merged, other repeats kept when the
  host's template renders them (``render``, e.g. :func:`template_render`), merged otherwise.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import convert_to_messages
from langchain_core.prompt_values import PromptValue

from ...errors import InputError
from ...guard import LatentGuard
from ...hosts import Host
from ...messages import END_WITH_USER, content_text, fit_roles, guard_role
from ...positions import Message, Prompt, render_with_generation_prompt, to_messages
from ...verdict import Verdict

__all__ = ["METADATA_KEY", "OUTPUT_METADATA_KEY", "guard_for", "host_from_langchain", "output_verdict_of",
           "template_render", "to_prompt", "verdict_metadata", "verdict_of"]

METADATA_KEY = "latent_guard"
"""Key of the verdict in an ``AIMessage``'s ``response_metadata``."""
OUTPUT_METADATA_KEY = "latent_guard_output"
"""Key of the response verdict (``target="response"``, the output check) in an ``AIMessage``'s metadata."""


def template_render(guard: LatentGuard) -> Callable[[list[Message]], object]:
    """Renders a conversation as ``guard`` will (its system prompt, its host's template); raises
    :class:`~latent_guardrail.errors.TemplateError` when the template refuses it (for :func:`to_prompt`)."""
    tokenizer, system_prompt = guard.host.tokenizer, guard.settings.system_prompt

    def render(messages: list[Message]) -> object:
        return render_with_generation_prompt(tokenizer, to_messages(messages, system_prompt))

    return render


def to_prompt(value: Any, *, trailing: Literal["drop", "error"] = "drop",
              render: Callable[[list[Message]], object] | None = None) -> Prompt:
    """The guard's prompt for a LangChain input: a ``str`` or a list of ``{"role", "content"}`` messages.

    ``render`` (e.g. :func:`template_render`) decides whether repeated user/AI messages are kept (the template
    renders them) or merged; without it they are kept (leading system messages are always merged).

    Raises:
        InputError: empty list, no user turn, a user turn without text, an unsupported input type.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        messages = value.to_messages()
    elif isinstance(value, BaseMessage):
        messages = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        try:
            messages = convert_to_messages(value)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InputError(f"cannot read these messages: {exc}") from exc
    else:
        raise InputError("the latent guard takes a str, a PromptValue or a list of messages, "
                         f"got {type(value).__name__}")
    return _messages_to_prompt(messages, trailing, render)


def _messages_to_prompt(messages: Sequence[BaseMessage], trailing: str,
                        render: Callable[[list[Message]], object] | None) -> list[Message]:
    if not messages:
        raise InputError("the message list is empty; give at least one user message")
    out: list[Message] = []
    for index, message in enumerate(messages):
        role = _role(message)
        if role is None:
            continue
        text = content_text(message.content)
        if role == "assistant" and not text:
            continue  # tool calls only
        out.append({"role": role, "content": text, "index": str(index)})
    users = [position for position, message in enumerate(out) if message["role"] == "user"]
    if not users:
        raise InputError("the messages hold no user turn to judge (only system, AI or tool messages)")
    last = users[-1]
    if trailing == "error" and int(out[last]["index"]) != len(messages) - 1:
        after = messages[-1].type
        raise InputError(f"{END_WITH_USER}, got a {after!r} message after it (GuardedChatModel answers "
                         "system/user/assistant conversations; no tool turns)")
    if not out[last]["content"].strip():
        raise InputError(f"message {out[last]['index']}: the last user message has no text (the guard reads text; "
                         "images and other content parts are ignored)")
    kept = [{"role": message["role"], "content": message["content"]} for message in out[: last + 1]]
    return fit_roles(kept, render if render is not None else _keep)


def _keep(_messages: list[Message]) -> object:
    return None


def _role(message: BaseMessage) -> str | None:
    if isinstance(message, ToolMessage):
        return None
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ChatMessage):
        return guard_role(message.role.lower())
    return guard_role(message.type)


def verdict_metadata(verdict: Verdict) -> dict[str, Any]:
    """The verdict as JSON-safe metadata (``response_metadata[METADATA_KEY]``); :func:`verdict_of` reads it back."""
    return verdict.model_dump(mode="json")


def verdict_of(message: BaseMessage) -> Verdict | None:
    """The verdict attached to an ``AIMessage`` by this adapter, or None."""
    data = message.response_metadata.get(METADATA_KEY)
    return Verdict.model_validate(data) if isinstance(data, Mapping) else None


def output_verdict_of(message: BaseMessage) -> Verdict | None:
    """The response verdict (the output check's) attached to an ``AIMessage`` by this adapter, or None."""
    data = message.response_metadata.get(OUTPUT_METADATA_KEY)
    return Verdict.model_validate(data) if isinstance(data, Mapping) else None


_HOSTS: weakref.WeakKeyDictionary[Any, Host] = weakref.WeakKeyDictionary()
_HOSTS_LOCK = threading.Lock()


def host_from_langchain(model: Any, name: str | None = None) -> Host:
    """A :class:`Host` sharing the ``model`` and ``tokenizer`` objects of a LangChain HF model (no second copy).

    Accepts a ``ChatHuggingFace`` (``.llm``), a ``HuggingFacePipeline`` (``.pipeline``), a transformers
    pipeline (``.model`` + ``.tokenizer``) or a :class:`GuardedChatModel` (``.guard.host``). The same model
    object always gets the same ``Host`` (hence one lock).

    Raises:
        InputError: no transformers model and tokenizer can be found on ``model``.
    """
    guard = getattr(model, "guard", None)
    if guard is not None and isinstance(getattr(guard, "host", None), Host):
        return guard.host
    found = model
    for _ in range(3):  # ChatHuggingFace.llm -> HuggingFacePipeline.pipeline -> transformers pipeline
        if hasattr(getattr(found, "model", None), "config") and getattr(found, "tokenizer", None) is not None:
            break
        found = getattr(found, "llm", None) or getattr(found, "pipeline", None) or found
    hf_model: Any = getattr(found, "model", None)
    tokenizer: Any = getattr(found, "tokenizer", None)
    if tokenizer is None or hf_model is None or not hasattr(hf_model, "config"):
        raise InputError(f"cannot find a transformers model and tokenizer on {type(model).__name__}; pass a "
                         "ChatHuggingFace, a HuggingFacePipeline, a transformers pipeline or a GuardedChatModel")
    with _HOSTS_LOCK:
        host = _HOSTS.get(hf_model)
        if host is None:
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            label = name or str(getattr(hf_model.config, "_name_or_path", "") or type(hf_model).__name__)
            host = Host(model=hf_model, tokenizer=tokenizer, name=label)
            _HOSTS[hf_model] = host
        return host


def guard_for(model: Any, path: str | os.PathLike[str] = "default", **kwargs: Any) -> LatentGuard:
    """A guard for a LangChain model's weights: a :class:`GuardedChatModel`'s own guard, or the saved guard at
    ``path`` loaded onto the model's host (fingerprint-checked), e.g. for a ``ChatHuggingFace``."""
    guard = getattr(model, "guard", None)
    if isinstance(guard, LatentGuard):
        return guard
    return LatentGuard.load(path, host_from_langchain(model), **kwargs)
