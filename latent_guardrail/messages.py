"""Framework-neutral chat messages: the roles and the text the guard reads, shared by every adapter.

An adapter turns its framework's message objects into ``(role name, content)`` pairs and calls these functions;
what stays in the adapter is only its own type conversion (LangChain's message classes, NeMo's ``ChatMessage``)
and its own policy for turns it leaves out:

- :func:`guard_role`: a framework's role name (``human``/``user``, ``ai``/``assistant``, ``system``) → the
  guard's ``user``/``assistant``/``system``; None for roles the guard does not read (``tool``, unknown ones);
- :func:`content_text`: a message content (a ``str``, None, or a list of content parts) → its text: the
  ``str`` parts and the ``{"type": "text", "text": str}`` parts joined by newlines; images and other parts are
  ignored;
- :func:`require_user_last`: a conversation to be answered must end with a user message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from .errors import InputError
from .positions import Message

__all__ = ["END_WITH_USER", "ROLE_NAMES", "content_text", "guard_role", "require_user_last"]

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
