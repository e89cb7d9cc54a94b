"""An extra reading of a prompt: a piece of its user text judged as an instruction of its own.

The guard reads a prompt whole and, besides, some of its pieces alone (typed turns, quoted values, the user turns
joined, segments; :meth:`~latent_guardrail.guard.LatentGuard.readings`); the verdict is the worst reading. A
reading's text is made of one or more *parts*, each a stretch of one user message's (normalised) content, so a
span found in the reading's text can be reported in the message it came from.
"""

from __future__ import annotations

from typing import NamedTuple

from .positions import PromptEncoding
from .verdict import VerdictSpan

__all__ = ["Part", "Reading"]


class Part(NamedTuple):
    """``length`` characters of user message ``message``'s content from offset ``base``, found at offset ``at`` of
    the reading's text."""

    message: int
    at: int
    base: int
    length: int


class Reading(NamedTuple):
    """One extra reading: its encoding (a single user message) and the parts its text is made of."""

    encoding: PromptEncoding
    parts: tuple[Part, ...]

    @property
    def message(self) -> int:
        """The message of the reading's first part."""
        return self.parts[0].message

    def span(self, span: VerdictSpan | None) -> VerdictSpan | None:
        """``span`` (offsets into the reading's text) in the offsets of the message where it starts, its end cut
        at that part's end (a closing stop the reading added is not part of the message)."""
        if span is None:
            return None
        part = max((p for p in self.parts if p.at <= span.start), key=lambda p: p.at, default=self.parts[0])
        start = part.base + max(0, span.start - part.at)
        end = part.base + min(max(0, span.end - part.at), part.length)
        return VerdictSpan(message=part.message, start=start, end=max(start, end))
