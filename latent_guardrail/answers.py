"""States of an answer's tokens, read in the context of its prompt: the input of the response scorer.

An answer is judged from the host's states at its own tokens, after the rendered prompt (generation prompt
included), exactly where the host computes them while it writes the answer. Three readings (*response views*)
of those states exist, each a set of rows per answer that the response scorer max-pools:

- ``last``: the state of the last answer token *so far*, at every ``every``-th answer token and at the last one
  (what a streaming check sees at each check point);
- ``mean``: the running mean over the answer's tokens so far, at the same check points;
- ``ends``: the state at every sentence end of the answer (a token whose text ends with ``. ! ? ;`` or holds a
  line break, :func:`ends_sentence`) and at the last token.

Offline (:func:`read_answer_states`) all three come from one forward pass over prompt + answer (capture hooks,
:mod:`latent_guardrail.activations`). During generation (:class:`AnswerMonitor`) the same states come from the
decoding steps themselves — hooks on the scorer's layers record the newest token's state of every step, so no
pass is added.

Shapes: :class:`AnswerStates` holds, per answer, ``(rows, layers, d)`` float32 tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .activations import residual_hooks, run_capture
from .batching import plan_batches
from .errors import InputError
from .layers import check_layers, decoder_blocks
from .positions import PromptEncoding, pad_batch

__all__ = ["RESPONSE_VIEWS", "AnswerEncoding", "AnswerMonitor", "AnswerStates", "ResponseView", "check_points",
           "encode_answer", "ends_sentence", "read_answer_states", "monitor_answer"]

ResponseView = Literal["last", "mean", "ends"]
RESPONSE_VIEWS: dict[str, str] = {
    "last": "state of the last answer token so far, at every k-th answer token and the last one",
    "mean": "running mean over the answer tokens so far, at every k-th answer token and the last one",
    "ends": "state at every sentence end of the answer (token text ends with . ! ? ; or holds a line break) and "
            "the last token",
}
"""The response views by name, with the rule an artifact stores (and compares on load)."""

_STOPS = frozenset(".!?;。！？")


def ends_sentence(piece: str) -> bool:
    """True when a token whose text is ``piece`` ends a sentence or a line (the ``ends`` view's rule)."""
    if "\n" in piece:
        return True
    stripped = piece.rstrip()
    return bool(stripped) and stripped[-1] in _STOPS


def check_points(length: int, every: int) -> list[int]:
    """Answer token indices checked by the ``last`` and ``mean`` views: every ``every``-th and the last."""
    if length < 1:
        return []
    points = list(range(every - 1, length, every))
    if not points or points[-1] != length - 1:
        points.append(length - 1)
    return points


@dataclass(frozen=True)
class AnswerEncoding:
    """A prompt encoding followed by an answer's token ids.

    ``answer_ids`` ``(m,)`` follow ``prompt.input_ids`` ``(n,)``; ``ends`` are answer token indices (0-based
    within the answer) of its sentence ends, the last token always included. ``truncated``: the answer was cut
    (from the end) to fit the context.
    """

    prompt: PromptEncoding
    answer_ids: tuple[int, ...]
    ends: tuple[int, ...]
    truncated: bool = False

    @property
    def input_ids(self) -> tuple[int, ...]:
        """Prompt and answer ``(n + m,)``."""
        return self.prompt.input_ids + self.answer_ids

    @property
    def start(self) -> int:
        """Index of the first answer token in ``input_ids``."""
        return len(self.prompt.input_ids)


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [str(tokenizer.decode([token], skip_special_tokens=False)) for token in ids]


def encode_answer(tokenizer: Any, prompt: PromptEncoding, response: str, *, max_tokens: int | None = None
                  ) -> AnswerEncoding:
    """Tokenize ``response`` as the answer that follows ``prompt`` (no special tokens added).

    Raises:
        InputError: ``response`` is not a string, or empty / whitespace only.
    """
    if not isinstance(response, str):
        raise InputError(f"a response must be a str, got {type(response).__name__}")
    if not response.strip():
        raise InputError("the response is empty or whitespace only; there is nothing to judge")
    ids = [int(token) for token in tokenizer(response.strip(), add_special_tokens=False)["input_ids"]]
    if not ids:
        raise InputError("the response tokenizes to no tokens")
    truncated = False
    if max_tokens is not None and len(prompt.input_ids) + len(ids) > max_tokens:
        room = max_tokens - len(prompt.input_ids)
        if room < 1:
            raise InputError(f"the prompt alone takes {len(prompt.input_ids)} of {max_tokens} tokens; no room is left "
                             "for the response")
        ids, truncated = ids[:room], True
    pieces = _pieces(tokenizer, ids)
    ends = [i for i, piece in enumerate(pieces) if ends_sentence(piece)]
    if not ends or ends[-1] != len(ids) - 1:
        ends.append(len(ids) - 1)
    return AnswerEncoding(prompt=prompt, answer_ids=tuple(ids), ends=tuple(ends), truncated=truncated)


@dataclass(frozen=True)
class AnswerStates:
    """Per answer, the rows of each response view: ``views[name][i]`` is ``(rows_i, layers, d)`` float32;
    ``prompts[i]`` ``(layers, d)`` float32 is the state of its prompt at ``t_inst`` (read in the same pass)."""

    layers: tuple[int, ...]
    views: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    prompts: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        first = next(iter(self.views.values()), [])
        return len(first)


def read_answer_states(model: nn.Module, answers: Sequence[AnswerEncoding], layers: Sequence[int], *,
                       pad_token_id: int, every: int, views: Sequence[str] = tuple(RESPONSE_VIEWS),
                       batch_size: int = 16, layer_template: str | None = None) -> AnswerStates:
    """The rows of ``views`` for every answer and its prompt's state at ``t_inst``, one forward pass per batch
    (left padding, early exit).

    Returns:
        :class:`AnswerStates` with ``(rows, len(layers), d)`` per answer and view and ``(len(layers), d)`` per
        prompt, in input order.
    """
    if every < 1:
        raise InputError(f"every must be a positive number of tokens, got {every!r}")
    unknown = [view for view in views if view not in RESPONSE_VIEWS]
    if unknown:
        raise InputError(f"unknown response view(s) {unknown}: use some of {', '.join(RESPONSE_VIEWS)}")
    out: dict[str, list[torch.Tensor | None]] = {view: [None] * len(answers) for view in views}
    prompts: list[torch.Tensor | None] = [None] * len(answers)
    lengths = [len(answer.input_ids) for answer in answers]
    for chunk in plan_batches(lengths, batch_size):
        rows = [answers[i] for i in chunk]
        fake = [row.prompt.model_copy(update={"input_ids": row.input_ids, "t_post_inst": len(row.input_ids) - 1})
                for row in rows]
        batch = pad_batch(fake, pad_token_id, side="left")
        seq = batch.input_ids.shape[1]
        points = [check_points(len(row.answer_ids), every) for row in rows]
        width_p = max(len(p) for p in points)
        width_e = max(len(row.ends) for row in rows)
        positions = torch.empty((len(rows), width_p + width_e + 1), dtype=torch.long)
        spans = torch.empty((len(rows), width_p, 2), dtype=torch.long)
        for r, row in enumerate(rows):
            base = seq - len(row.input_ids) + row.start
            p = points[r] + [points[r][-1]] * (width_p - len(points[r]))
            e = list(row.ends) + [row.ends[-1]] * (width_e - len(row.ends))
            positions[r] = torch.tensor([base + i for i in p] + [base + i for i in e]
                                        + [seq - len(row.input_ids) + row.prompt.t_inst])
            spans[r, :, 0] = base
            spans[r, :, 1] = torch.tensor([base + i for i in p])
        result = run_capture(model, batch.input_ids, batch.attention_mask, layers, positions,
                             layer_template=layer_template, spans=spans)
        stacked = result.stacked()                       # (batch, width_p + width_e + 1 + width_p, layers, d)
        means = width_p + width_e + 1
        for r, index in enumerate(chunk):
            n_p, n_e = len(points[r]), len(rows[r].ends)
            found = {"last": stacked[r, :n_p], "ends": stacked[r, width_p:width_p + n_e],
                     "mean": stacked[r, means:means + n_p]}
            for view in views:
                out[view][index] = found[view].clone()
            prompts[index] = stacked[r, width_p + width_e].clone()
    return AnswerStates(layers=tuple(int(x) for x in layers),
                        views={view: [t for t in states if t is not None] for view, states in out.items()},
                        prompts=[t for t in prompts if t is not None])


@dataclass
class AnswerMonitor:
    """States of the newest token of every forward pass seen inside :func:`monitor_answer` (decoding steps).

    ``states`` holds one ``(layers, d)`` float32 tensor per pass, in order: the answer's tokens as they are fed
    back (the state of answer token ``k`` is computed by the step that generates token ``k + 1``).
    """

    layers: tuple[int, ...]
    states: list[torch.Tensor] = field(default_factory=list)
    passes: int = 0
    _pending: dict[int, torch.Tensor] = field(default_factory=dict)

    def _record(self, layer: int, hidden: torch.Tensor) -> None:
        self._pending[layer] = hidden[0, -1].detach().to("cpu", torch.float32)
        if len(self._pending) == len(self.layers):
            self.states.append(torch.stack([self._pending[x] for x in self.layers]))
            self._pending = {}
            self.passes += 1


@contextmanager
def monitor_answer(model: nn.Module, layers: Sequence[int], *, layer_template: str | None = None
                   ) -> Iterator[AnswerMonitor]:
    """Record the newest token's state at ``layers`` on every forward pass inside the block (batch 1).

    Every handle is held before the first is registered and all are removed in ``finally``. Only the thread
    that entered the block is recorded.
    """
    blocks = decoder_blocks(model, layer_template)
    wanted = check_layers(layers, len(blocks))
    monitor = AnswerMonitor(layers=wanted)

    def record(layer: int, hidden: torch.Tensor | None) -> None:
        if isinstance(hidden, torch.Tensor):
            monitor._record(layer, hidden)

    with residual_hooks(blocks, wanted, record):
        yield monitor
