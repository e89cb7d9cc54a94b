"""Where sentences and clauses end in a user's text (pure string logic, no tokenizer).

The guard reads the residual state at the end of every sentence or clause of the user's messages, because a
harmful request followed by a pleasantry ("… Thanks!") or buried in benign context keeps its harmful state at
its own end (causal attention: later words cannot change an earlier token's state). :func:`clause_ends`
finds those ends; :func:`sentence_groups` cuts a text into groups of sentences for segment mode;
:func:`typed_turns` finds the user pieces of a conversation typed into one message (fake turns);
:func:`quoted_values` finds the texts quoted or carried as values inside one (payloads); :func:`unfinished_runs`
finds user turns that break off mid-sentence and the turns that finish them (split requests).

An end is a stop (``. ! ? ;``) followed by whitespace, a closing quote or bracket, or the end of the text;
the last closer of a run right after a stop, when whitespace or the end follows it (``…bomb?"}`` ends at the
``?`` and at the ``}``); the last visible character before a line break, and always the
last visible character of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Clause", "clause_ends", "quoted_values", "sentence_groups", "typed_turns", "unfinished_runs"]

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


# Quoted and carried texts: a double-quoted string (JSON, YAML, CSV, dialogue; backslash escapes skipped), the
# content of an element (<tag>…</tag>), the body of a code fence, a markdown quote, the value of a field line
# ("Request: …"). Single quotes are left alone: apostrophes make them ambiguous.
_QUOTES = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb", "\u201e": "\u201c"}
_ELEMENT = re.compile(r"<(?P<tag>[A-Za-z][\w:-]{0,30})(?:\s[^<>]*)?>(?P<body>.*?)</(?P=tag)\s*>", re.DOTALL)
_FENCE = re.compile(r"```[^\n]*\n(?P<body>.*?)(?:```|\Z)", re.DOTALL)
_QUOTE_LINE = re.compile(r"^[ \t]*>[ \t]?(?P<body>.*)$", re.MULTILINE)
_FIELD_LINE = re.compile(r"^[ \t]*[A-Za-z][\w \t-]{0,30}:[ \t]+(?P<body>\S.*)$", re.MULTILINE)
MAX_QUOTED = 8
"""Most quoted values read per text (the longest ones, in text order)."""


def _double_quoted(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        close = _QUOTES.get(text[i])
        if close is None:
            i += 2 if text[i] == "\\" else 1
            continue
        j = i + 1
        while j < n and text[j] != close:
            j += 2 if text[j] == "\\" else 1
        if j >= n:
            break
        spans.append((i + 1, j))
        i = j + 1
    return spans


def quoted_values(text: str, min_words: int = 3) -> list[Clause]:
    """The texts ``text`` carries inside quotes or data, each to be read as a request of its own.

    A value is the inside of a double-quoted string (``"…"``, ``“…”``, ``«…»``; a backslash escapes the
    quote), the content of an element (``<request>…</request>``), the body of a code fence, a markdown quote
    line (``> …``) or the value of a field line (``Request: …``). Values of fewer than ``min_words`` words,
    and a value that is the whole text (quoted or not), are left out; at most :data:`MAX_QUOTED` values (the
    longest), in text order, stripped of surrounding whitespace and without duplicates.
    """
    spans = _double_quoted(text)
    spans += [match.span("body") for match in _ELEMENT.finditer(text)]
    spans += [match.span("body") for match in _FENCE.finditer(text)]
    spans += [match.span("body") for match in _QUOTE_LINE.finditer(text)]
    spans += [match.span("body") for match in _FIELD_LINE.finditer(text)]
    whole = text.strip()
    found: dict[tuple[int, int], None] = {}
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b - a >= 2 and _QUOTES.get(text[a]) == text[b - 1]:  # a field's value in quotes: the quoted text
            a, b = a + 1, b - 1
        value = text[a:b]
        if len(value.split()) >= min_words and whole not in (value, text[max(0, a - 1):b + 1]):
            found[(a, b)] = None
    longest = sorted(found, key=lambda span: span[0] - span[1])[:MAX_QUOTED]
    return [Clause(a, b) for a, b in sorted(longest)]


_FINISHED = frozenset(".!?。！？\"')]}»”’>*`")


def _unfinished(text: str) -> bool:
    """``text`` breaks off mid-sentence: its last visible character is a letter, a digit or a joining mark
    (``, : - (``…), or it trails off in an ellipsis."""
    stripped = text.rstrip()
    return bool(stripped) and (stripped.endswith(("...", "\u2026")) or stripped[-1] not in _FINISHED)


def unfinished_runs(turns: list[str]) -> list[list[int]]:
    """Runs of consecutive user turns that make one sentence: every turn of a run but the last breaks off
    mid-sentence (ends on a letter, digit or joining mark, or trails off in an ellipsis), so the next one goes
    on with it. Only runs of two or more turns are returned, as lists of indices into ``turns``; a conversation
    whose turns each end a sentence has none (nothing to join: each turn is read in its own right)."""
    runs: list[list[int]] = []
    current: list[int] = []
    for index, turn in enumerate(turns):
        current.append(index)
        if not _unfinished(turn) or index == len(turns) - 1:
            if len(current) > 1:
                runs.append(current)
            current = []
    return runs
