"""Framework-neutral chat messages: the roles and the text the guard reads, shared by every adapter.

An adapter turns its framework's message objects into ``(role name, content)`` pairs and calls these functions;
what stays in the adapter is only its own type conversion (LangChain's message classes, NeMo's ``ChatMessage``)
and its own policy for turns it leaves out:

- :func:`guard_role`: a framework's role name (``human``/``user``, ``ai``/``assistant``, ``system``) → the
  guard's ``user``/``assistant``/``system``; None for roles the guard does not read (``tool``, unknown ones);
- :func:`content_text`: a message content (a ``str``, None, or a list of content parts) → its text: the
  ``str`` parts and the ``{"type": "text", "text": str}`` parts joined by newlines; images and other parts are
  ignored;
- :func:`require_user_last`: a conversation to be answered must end with a user message;
- :func:`fit_roles`: repeated roles (two system, user or assistant messages in a row) the way the host's chat
  template can take them. Consecutive system messages at the start are always merged (the guard takes one
  system message, first); consecutive user or assistant messages are kept when the template renders them and
  merged (contents joined by a blank line) when it refuses them (e.g. Mistral's strict alternation). Either way
  the last user message's text ends the last user turn, so the guard reads ``t_inst`` where it did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from types import MappingProxyType

from .errors import InputError, TemplateError
from .positions import Message

__all__ = ["END_WITH_USER", "ROLE_NAMES", "content_text", "fit_roles", "guard_role", "merge_repeated_roles",
           "require_user_last"]

ROLE_NAMES: Mapping[str, str] = MappingProxyType({
    "human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"})
"""Framework role names the guard reads, and the guard's role for each."""

END_WITH_USER = "the conversation must end with a user message to be answered"
"""The start of the error for a conversation whose last turn is not a user message."""


def guard_role(name: str) -> str | None:
    """The guard's role (``user``, ``assistant`` or ``system``) for a framework's role ``name``, else None."""
    return ROLE_NAMES.get(name)


def content_text(content: object) -> str:
    """The text of a message content: a ``str`` as is, the text parts of a list of parts joined by newlines.

    A part is text when it is a ``str`` or a mapping ``{"type": "text", "text": <str>}``; any other content
    (None, images, tool-call parts) has no text: ``""``.
    """
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, Sequence):
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "\n".join(parts)


def require_user_last(messages: Sequence[Message], detail: str = "") -> None:
    """Check that ``messages`` is non-empty and ends with a user message.

    Raises:
        InputError: :data:`END_WITH_USER` followed by ``detail``.
    """
    if not messages or messages[-1]["role"] != "user":
        raise InputError(END_WITH_USER + detail)


def merge_repeated_roles(messages: Sequence[Message], roles: Sequence[str] = ("system", "user", "assistant")
                         ) -> list[Message]:
    """``messages`` with each run of consecutive messages of one of ``roles`` merged into one message (contents
    joined by a blank line; empty contents dropped from the join). A message holding ``tool_calls`` is never
    merged (its calls would be lost)."""
    out: list[Message] = []
    for message in messages:
        if out and message["role"] == out[-1]["role"] and message["role"] in roles \
                and "tool_calls" not in message and "tool_calls" not in out[-1]:
            parts = [part for part in (out[-1]["content"], message["content"]) if part]
            out[-1] = {**out[-1], "content": "\n\n".join(parts)}
        else:
            out.append(dict(message))
    return out


def fit_roles(messages: Sequence[Message], render: Callable[[list[Message]], object] | None = None) -> list[Message]:
    """Repeated roles made acceptable to the host (see the module docstring).

    Args:
        messages: ``{"role", "content"}`` messages.
        render: renders a conversation with the host's chat template, raising
            :class:`~latent_guardrail.errors.TemplateError` when the template refuses it (e.g.
            ``lambda m: render_with_generation_prompt(tokenizer, m)``); None merges every repeated role.
    """
    leading = 0
    while leading < len(messages) and messages[leading]["role"] == "system":
        leading += 1
    fitted = [*merge_repeated_roles(messages[:leading]), *(dict(m) for m in messages[leading:])]
    repeated = any(a["role"] == b["role"] for a, b in pairwise(fitted))
    if not repeated:
        return fitted
    if render is not None:
        try:
            render(fitted)
            return fitted
        except TemplateError:
            pass
    return merge_repeated_roles(fitted)
