"""The one decode loop: from a prefill's logits and KV cache to tokens and text, one token per step.

Every single-prompt generation of the package decodes here:

- guarded generation (:mod:`latent_guardrail.guarded`) hands over the logits and cache of the guard's own
  prefill (the pass that also produced the verdict) — or of the steered pass for a steered refusal;
- the NeMo provider's unguarded path (``guarded: false``) runs :func:`generate`: a plain :func:`prefill`, then
  the same loop.

Calibration's replies (:func:`latent_guardrail.generation.generate_replies`) are batched greedy generation
with ``model.generate`` over left-padded batches; they share this module's pad-token rule
(:func:`pad_token_id`), not the per-prompt loop, whose outputs on a padded batch would not be the same.

The loop: greedy (``temperature == 0``: argmax) or sampling from ``softmax(logits / temperature)`` with a
private ``torch.Generator`` (seeded by ``seed``, so samples are reproducible and the global RNG is untouched);
it ends at an end-of-turn token (``"stop"``, the token is kept as ``model.generate`` keeps it), at a stop
sequence (``"stop"``, the text is cut before it), after ``max_new_tokens`` or when the context is full
(``"length"``), or when ``cancel`` is set (``"cancelled"``, checked before each token).

Call options are validated once, by :func:`call_options` (or its parts :func:`check_max_new_tokens`,
:func:`check_temperature`, :func:`check_stop`), into a :class:`CallOptions`.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .errors import InputError
from .layers import input_device
from .streaming import drain

__all__ = ["CallOptions", "DecodeFinish", "Decoded", "TextChunk", "cache_argument", "cache_of", "call_options",
           "check_max_new_tokens", "check_stop", "check_temperature", "decode", "end_token_ids", "generate",
           "held_back", "pad_token_id", "prefill", "select_token"]

DecodeFinish = Literal["stop", "length", "cancelled"]
"""Why decoding ended: an end token or a stop sequence, the token budget, or ``cancel``."""


# ------------------------------------------------------------------------------------------------ call options

@dataclass(frozen=True)
class CallOptions:
    """The validated generation options of one call (hashable: it keys the NeMo provider's prepared answers).

    ``max_new_tokens``: most tokens to generate (fewer when the context is full); ``temperature``: 0 = greedy;
    ``seed``: the sampler's seed (``temperature > 0``; None = a fresh one); ``stop``: strings that end the answer.
    """

    max_new_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def check_max_new_tokens(value: object, name: str = "max_new_tokens") -> int:
    """``value`` if it is a positive int (not a bool).

    Raises:
        InputError: anything else (the message names the option as ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def check_temperature(value: object) -> float:
    """``value`` as a float if it is a finite number ``>= 0`` (not a bool).

    Raises:
        InputError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {value!r}")
    return float(value)


def check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Stop sequences as a tuple: None is none, a ``str`` is one.

    Raises:
        InputError: an item that is not a non-empty string.
    """
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for item in stops:
        if not isinstance(item, str) or not item:
            raise InputError(f"stop sequences must be non-empty strings, got {item!r}")
    return stops


def call_options(max_new_tokens: object, temperature: object = 0.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, *, max_tokens_name: str = "max_new_tokens") -> CallOptions:
    """Validate one call's options (in this order: ``max_new_tokens``, ``temperature``, ``stop``).

    ``max_tokens_name``: how errors name ``max_new_tokens`` (the NeMo provider says ``max_tokens``).

    Raises:
        InputError: a bad value (see :func:`check_max_new_tokens`, :func:`check_temperature`, :func:`check_stop`).
    """
    return CallOptions(max_new_tokens=check_max_new_tokens(max_new_tokens, max_tokens_name),
                       temperature=check_temperature(temperature), seed=seed, stop=check_stop(stop))


# ------------------------------------------------------------------------------------------------ model plumbing

def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token (as the tokenizer
    holds it: a tokenizer with neither is refused by :func:`~latent_guardrail.positions.pad_batch`)."""
    value: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return value


def end_token_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """Token ids that end an answer: the generation config's EOS id(s) and the tokenizer's EOS."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None) if config is not None else None
    for item in value if isinstance(value, list | tuple) else [value]:
        if isinstance(item, int):
            ids.add(item)
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def cache_argument(model: nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    """The KV cache returned by a forward pass (``cache`` or, before transformers 5.24, ``past_key_values``)."""
    value = getattr(output, "cache", None)
    return value if value is not None else getattr(output, "past_key_values", None)


def prefill(model: nn.Module, input_ids: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """One forward pass over a whole prompt with ``use_cache=True``.

    Args:
        input_ids: the prompt's token ids ``(seq,)``.

    Returns:
        The last position's logits ``(1, vocab)`` and the KV cache, to hand to :func:`decode`.
    """
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=input_device(model))
    with torch.inference_mode():
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    return output.logits[:, -1, :], cache_of(output)


# ------------------------------------------------------------------------------------------------ the loop

@dataclass(frozen=True)
class TextChunk:
    """New text of one decoding step (may be empty while a multi-byte character or stop sequence is pending).

    ``token_ids``: the step's token (empty for the final flush of held-back text).
    """

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Decoded:
    """The end of a decoding: the answer's text (cut before a stop sequence), its tokens (an end token included
    when one was generated) and why it ended."""

    text: str
    tokens: tuple[int, ...]
    finish_reason: DecodeFinish


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could start a stop sequence (not yet safe to emit)."""
    keep = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:size]):
                keep = size
                break
    return keep


def select_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Next token from logits ``(1, vocab)``: argmax, or a sample at ``temperature`` drawn with ``generator``."""
    if temperature == 0 or generator is None:
        return int(logits[0].argmax())
    probs = torch.softmax(logits[0].float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _sampler(options: CallOptions, device: torch.device) -> torch.Generator | None:
    """The private generator of a sampling call (seeded by ``options.seed``), None when greedy."""
    if options.temperature <= 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed if options.seed is not None else int(torch.seed()))
    return generator


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop sequence in ``text``, or -1."""
    return min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=-1)


def _safe_end(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` may be emitted: not a possible stop-sequence start nor an incomplete character."""
    safe = len(text) - held_back(text, stops)
    if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
        safe = min(safe, len(text.rstrip("\ufffd")))
    return safe


def decode(model: nn.Module, tokenizer: Any, logits: torch.Tensor, cache: Any, *, prompt_tokens: int,
           options: CallOptions, max_positions: int | None = None,
           cancel: threading.Event | None = None) -> Iterator[TextChunk | Decoded]:
    """Decode from a prefill's ``logits`` ``(1, vocab)`` and KV ``cache``, one token per step.

    Args:
        model: the causal LM that ran the prefill (a forward pass per further token, with the cache).
        tokenizer: its tokenizer (text is ``tokenizer.decode(tokens, skip_special_tokens=True)``).
        prompt_tokens: length of the prompt the cache holds.
        options: validated :class:`CallOptions`.
        max_positions: the model's context size; the budget is cut so the answer fits (None: no limit).
        cancel: checked before each token; once set, decoding ends with ``"cancelled"``.

    Yields:
        A :class:`TextChunk` per generated token (and one more that flushes text held back for a possible stop
        sequence), then exactly one :class:`Decoded`. Callers that run other work on the model hold its lock.
    """
    device = input_device(model)
    stops = options.stop
    budget = options.max_new_tokens if max_positions is None \
        else max(0, min(options.max_new_tokens, max_positions - prompt_tokens))
    end_ids = end_token_ids(model, tokenizer)
    cache_name = cache_argument(model)
    generator = _sampler(options, logits.device)
    tokens: list[int] = []
    emitted = 0
    text = ""
    reason: DecodeFinish = "length"
    with torch.inference_mode():
        for step in range(budget):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            token = select_token(logits, options.temperature, generator)
            tokens.append(token)
            if token in end_ids:
                reason = "stop"
                break
            text = str(tokenizer.decode(tokens, skip_special_tokens=True))
            cut = _first_stop(text, stops)
            if cut >= 0:
                text = text[:cut]
                yield TextChunk(text=text[emitted:], token_ids=(token,))
                emitted = len(text)
                reason = "stop"
                break
            safe = _safe_end(text, stops)
            yield TextChunk(text=text[emitted:safe] if safe > emitted else "", token_ids=(token,))
            emitted = max(emitted, safe)
            if step + 1 == budget:
                break
            total = prompt_tokens + len(tokens)
            output = model(input_ids=torch.tensor([[token]], dtype=torch.long, device=device),
                           attention_mask=torch.ones((1, total), dtype=torch.long, device=device),
                           use_cache=True, **{cache_name: cache})
            logits, cache = output.logits[:, -1, :], cache_of(output)
    if emitted < len(text):  # flush what was held back for a possible stop sequence
        yield TextChunk(text=text[emitted:], token_ids=())
    yield Decoded(text=text, tokens=tuple(tokens), finish_reason=reason)


def generate(model: nn.Module, tokenizer: Any, input_ids: Sequence[int], options: CallOptions, *,
             max_positions: int | None = None, cancel: threading.Event | None = None) -> Decoded:
    """A plain (unguarded) answer to one prompt: :func:`prefill`, then :func:`decode` to the end.

    Args:
        input_ids: the rendered prompt's token ids ``(seq,)``.

    Callers hold the model's lock (``Host.lock``) around the call.
    """
    logits, cache = prefill(model, input_ids)
    return drain(decode(model, tokenizer, logits, cache, prompt_tokens=len(input_ids), options=options,
                        max_positions=max_positions, cancel=cancel), Decoded, "decoding")
