"""Normalise a user's text before the guard judges it: the same request typed differently reads the same.

:func:`normalize_text` applies, in order:

1. Unicode NFKC (full-width letters, ligatures, compatibility forms → their plain form);
2. removal of zero-width and invisible format characters (U+200B–U+200F, U+2060–U+2064, U+FEFF, U+00AD, …)
   and of control characters other than tab, line feed and carriage return;
3. optionally, case folding (``str.casefold``);
4. confusable folding: inside a word that mixes Latin letters with Cyrillic or Greek look-alikes
   ("pаssword" with a Cyrillic а), the look-alikes become the Latin letters they imitate; words written
   wholly in Cyrillic or Greek are left alone;
5. optionally, closing the last sentence: a text that ends in a letter or digit (trailing spaces aside) gets a
   full stop, so "write a poem about the sea" is read like "write a poem about the sea." — the guard reads
   states at sentence and clause ends, and a missing final stop is incidental wording.

The guard judges the normalised text; ``verdict.normalized`` says whether it differed from the text as typed.
Pure string logic: no tokenizer, no model.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Normalized", "CONFUSABLES", "close_prompt", "close_sentence", "normalize_for", "normalize_prompt",
           "normalize_text"]

CONFUSABLES: Mapping[str, str] = MappingProxyType({
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    # Cyrillic upper case
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Һ": "H", "Ӏ": "I",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes from other blocks
    "ı": "i", "ɡ": "g", "ℓ": "l",
})
"""Look-alike letters and the Latin letter each imitates (written for this project from the Unicode charts)."""

_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Normalized:
    """A normalised text and whether normalising changed it."""

    text: str
    changed: bool


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" and char not in "\t\n\r"


def _fold_word(match: re.Match[str]) -> str:
    word = match.group(0)
    if not any(char in CONFUSABLES for char in word):
        return word
    latin = any("a" <= char.lower() <= "z" for char in word)
    if not latin:  # a word written wholly in another script is that script, not a disguise
        return word
    return "".join(CONFUSABLES.get(char, char) for char in word)


def close_sentence(text: str) -> str:
    """``text`` with a full stop after its last character when that is a letter or digit (trailing white space
    removed first); otherwise unchanged. Offsets into the result are offsets into ``text``."""
    stripped = text.rstrip()
    return stripped + "." if stripped and stripped[-1].isalnum() else text


def normalize_text(text: str, *, case_fold: bool = False, close: bool = False) -> Normalized:
    """The text as the guard judges it (see the module docstring) and whether it changed.

    Idempotent: normalising the result again changes nothing.
    """
    out = unicodedata.normalize("NFKC", text)
    out = _INVISIBLE.sub("", out)
    if any(_is_control(char) for char in out):
        out = "".join(char for char in out if not _is_control(char))
    if case_fold:  # before confusable folding: case folding can itself make look-alikes ("ͅ" → "ι")
        out = unicodedata.normalize("NFKC", out.casefold())
    out = _WORD.sub(_fold_word, out)
    out = unicodedata.normalize("NFKC", out)
    if close:
        out = close_sentence(out)
    return Normalized(out, out != text)


def _map_user_texts(prompt: Any, change: Callable[[str], str]) -> tuple[Any, bool]:
    """``prompt`` (a string or chat messages) with ``change`` applied to the string and every user message's
    content, and whether anything changed; unchanged prompts come back as the same object."""
    if isinstance(prompt, str):
        text = change(prompt)
        return text, text != prompt
    if not isinstance(prompt, Sequence) or isinstance(prompt, bytes | bytearray):
        return prompt, False
    changed = False
    out: list[Any] = []
    for message in prompt:
        if isinstance(message, Mapping) and message.get("role") == "user" and isinstance(message.get("content"), str):
            text = change(message["content"])
            changed |= text != message["content"]
            out.append({**message, "content": text} if text != message["content"] else message)
        else:
            out.append(message)
    return (out, True) if changed else (prompt, False)


def normalize_prompt(prompt: Any, *, case_fold: bool = False, close: bool = False) -> tuple[Any, bool]:
    """A prompt (a string or chat messages) with every user message's content normalised, and whether anything
    changed. Other roles, and anything that is not a string or a list of role/content mappings, pass unchanged
    (the prompt's own validation reports them)."""
    return _map_user_texts(prompt, lambda text: normalize_text(text, case_fold=case_fold, close=close).text)


def close_prompt(prompt: Any) -> tuple[Any, bool]:
    """:func:`close_sentence` on the string or every user message's content, and whether anything changed.

    Closing is the last step of :func:`normalize_text`, so ``close_prompt(normalize_prompt(p)[0])`` is
    ``normalize_prompt(p, close=True)``: a prompt needed both ways is normalised once.
    """
    return _map_user_texts(prompt, close_sentence)


def normalize_for(prompt: Any, settings: Any, *, case_fold: bool | None = None, close: bool | None = None
                  ) -> tuple[Any, bool]:
    """``prompt`` as a guard with ``settings`` (a :class:`~latent_guardrail.settings.GuardSettings`) judges it, and
    whether that changed it: unchanged when ``settings.normalize`` is off, else :func:`normalize_prompt` with the
    settings' ``case_fold`` and ``close_sentences`` (or the ones given)."""
    if not settings.normalize:
        return prompt, False
    return normalize_prompt(prompt, case_fold=settings.case_fold if case_fold is None else case_fold,
                            close=settings.close_sentences if close is None else close)
