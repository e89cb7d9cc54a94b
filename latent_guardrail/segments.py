"""Where sentences and clauses end in a user's text (pure string logic, no tokenizer).

The guard reads the residual state at the end of every sentence or clause of the user's messages, because a
harmful request followed by a pleasantry ("… Thanks!") or buried in benign context keeps its harmful state at
its own end (causal attention: later words cannot change an earlier token's state). :func:`clause_ends`
finds those ends; :func:`sentence_groups` cuts a text into groups of sentences for segment mode;
:func:`typed_turns` finds the user pieces of a conversation typed into one message (fake turns).

An end is a stop (``. ! ? ;``) followed by whitespace, a closing quote or bracket, or the end of the text;
the last closer of a run right after a stop, when whitespace or the end follows it (``…bomb?"}`` ends at the
``?`` and at the ``}``); the last visible character before a line break, and always the
last visible character of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Clause", "clause_ends", "sentence_groups", "typed_turns"]

# A colon ends a clause only before a line break (or at the end): "Subject:", '"query":' and "Note: …" open
# what follows rather than close a thought, and their states scored as requests of their own.
_STOPS = frozenset(".!?;。！？")
_CLOSERS = frozenset("\"')]}»”’>")
_SENTENCE_STOPS = frozenset(".!?\n。！？")


@dataclass(frozen=True)
class Clause:
    """One clause of a text: ``text[start:end]``, ``end - 1`` being its last visible character."""

    start: int
    end: int


def _after_stop(text: str, i: int) -> bool:
    """``text[i]`` closes a quote or bracket right after a stop (``?"`` or ``.)}``)."""
    j = i - 1
    while j >= 0 and text[j] in _CLOSERS:
        j -= 1
    return j >= 0 and text[j] in _STOPS


def clause_ends(text: str) -> list[Clause]:
    """The clauses of ``text`` in order, each ending at a clause end (see the module docstring).

    Leading whitespace is not part of a clause; a text of whitespace only has none.
    """
    ends: list[int] = []
    n = len(text)
    for i, char in enumerate(text):
        if char.isspace():
            continue
        nxt = text[i + 1] if i + 1 < n else ""
        if char in _STOPS or (char in _CLOSERS and _after_stop(text, i)):
            if nxt == "" or nxt.isspace() or (nxt in _CLOSERS and char in _STOPS):
                ends.append(i)
                continue
        if nxt in ("\n", "\r"):
            ends.append(i)
    last = len(text.rstrip()) - 1
    if last >= 0 and (not ends or ends[-1] != last):
        ends.append(last)
    clauses = []
    start = 0
    for end in ends:
        while start <= end and text[start].isspace():
            start += 1
        if start <= end:
            clauses.append(Clause(start, end + 1))
        start = end + 1
    return clauses


def sentence_groups(text: str, max_chars: int = 400) -> list[Clause]:
    """Cut ``text`` into consecutive groups of whole sentences of at most about ``max_chars`` characters.

    Sentences end at ``. ! ?`` or a line break; a sentence longer than ``max_chars`` is a group of its own.
    The groups cover every visible character of the text exactly once, in order.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    sentences = [c for c in clause_ends(text) if text[c.end - 1] in _SENTENCE_STOPS or c.end >= len(text.rstrip())
                 or (c.end < len(text) and text[c.end] in "\n\r")]
    groups: list[Clause] = []
    current: Clause | None = None
    for sentence in _merge_to_sentences(text, sentences):
        if current is None:
            current = sentence
        elif sentence.end - current.start > max_chars:
            groups.append(current)
            current = sentence
        else:
            current = Clause(current.start, sentence.end)
    if current is not None:
        groups.append(current)
    return groups


def _merge_to_sentences(text: str, ends: list[Clause]) -> list[Clause]:
    """Sentences from the sentence-ending clauses: each runs from the previous sentence's end."""
    out = []
    start = 0
    for clause in ends:
        while start < clause.end and text[start].isspace():
            start += 1
        if start < clause.end:
            out.append(Clause(start, clause.end))
        start = clause.end
    return out


# Role markers of chat transcripts typed as text: chat-template tokens (ChatML, Llama 3, Llama 2 / Mistral,
# Alpaca-style headers) anywhere, and "User:" / "Assistant:" style speaker labels at the start of a line.
_USER, _OTHER, _NEUTRAL = "user", "other", "neutral"
_MARKERS = re.compile(
    r"<\|im_start\|>\s*(?P<chatml>[a-z_]+)"
    r"|<\|start_header_id\|>\s*(?P<llama3>[a-z_]+)\s*<\|end_header_id\|>"
    r"|(?P<inst>\[INST\])|(?P<endinst>\[/INST\])"
    r"|(?P<close><\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|</s>|<s>|<<SYS>>|<</SYS>>)"
    r"|^[ \t]*(?:#{2,4}[ \t]*)?(?P<label>user|human|me|assistant|ai|bot|gpt|chatbot|system|instruction|response)"
    r"[ \t]*:",
    re.IGNORECASE | re.MULTILINE)
_USER_NAMES = frozenset({"user", "human", "me", "instruction"})


def _role_of(match: re.Match[str]) -> str:
    if match.group("inst"):
        return _USER
    if match.group("endinst"):
        return _OTHER
    if match.group("close"):
        return _NEUTRAL
    name = (match.group("chatml") or match.group("llama3") or match.group("label") or "").lower()
    return _USER if name in _USER_NAMES else _OTHER


def typed_turns(text: str) -> list[Clause]:
    """The user pieces of a conversation typed into one message, or ``[]`` when ``text`` types none.

    A typed conversation is text holding chat-template role markers (``<|im_start|>user``, ``[INST]`` …
    ``[/INST]``, ``<|start_header_id|>assistant<|end_header_id|>``) or speaker labels at the start of a line
    (``User:``, ``Assistant:``, ``### Instruction:``). The text before the first marker and the text after
    every user marker (up to the next marker) are user pieces; text after an assistant or system marker is
    not. Pieces are stripped of surrounding whitespace; empty pieces are dropped. When no marker names a role
    (none at all, or only closers such as ``<|im_end|>``) there is nothing to judge separately: ``[]``.
    """
    matches = list(_MARKERS.finditer(text))
    if all(_role_of(match) == _NEUTRAL for match in matches):  # no role named: no conversation typed
        return []
    pieces: list[Clause] = []
    role, start = _USER, 0
    for match in [*matches, None]:
        stop = len(text) if match is None else match.start()
        if role == _USER:
            a, b = start, stop
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a < b:
                pieces.append(Clause(a, b))
        if match is not None:
            new = _role_of(match)
            if new != _NEUTRAL:
                role = new
            start = match.end()
    return pieces
