"""Guarded generation: the guard's verdict and the answer come from **one** prefill.

The prompt runs through the host once, with capture hooks on the layers the guard reads. In a hook placed
right after the last of those layers the verdict is computed from the captured states; a blocking verdict
stops the pass there (the blocks above it and the LM head never run). An allowed prompt lets the same pass
finish with ``use_cache=True``; its logits and KV cache feed a plain greedy (or temperature) decoding loop,
so there is never a second prefill. The host's lock is held for the whole generation.

Typical use::

    result = guarded_generate(guard, "How do I kill a stuck process?", max_new_tokens=64)
    result.blocked, result.verdict.score, result.text

    for event in guarded_stream(guard, prompt, max_new_tokens=64):
        ...  # first a Verdict, then GuardedChunk per token, last the GuardedResult
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .activations import Capture, capture, view_slots
from .errors import InputError, LatentGuardError
from .layers import check_layers, decoder_blocks, input_device
from .positions import Prompt, PromptEncoding
from .verdict import Verdict

if TYPE_CHECKING:
    from .guard import LatentGuard

__all__ = [
    "DEFAULT_REFUSAL",
    "FinishReason",
    "GuardedChunk",
    "GuardedEvent",
    "GuardedResult",
    "LatentGuardBlocked",
    "OnBlock",
    "Usage",
    "guarded_generate",
    "guarded_stream",
    "steered_refusal",
]

logger = logging.getLogger(__name__)

DEFAULT_REFUSAL = "I'm sorry, I can't help with that."
OnBlock = Literal["refuse", "raise", "steer"]
FinishReason = Literal["stop", "length", "blocked", "cancelled"]
_ON_BLOCK = ("refuse", "raise", "steer")


class LatentGuardBlocked(LatentGuardError):
    """The guard blocked a prompt; ``verdict`` says why (score, threshold, per-layer and category scores)."""

    def __init__(self, verdict: Verdict, message: str | None = None) -> None:
        self.verdict = verdict
        super().__init__(message if message is not None else f"blocked by the latent guard: {verdict.summary()}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.verdict, str(self)))


@dataclass(frozen=True)
class Usage:
    """Token counts of one guarded generation (prompt tokens are counted even when the prefill stopped early)."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class GuardedChunk:
    """New text of one decoding step (may be empty while a multi-byte character or stop sequence is pending)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class GuardedResult:
    """The outcome of a guarded generation.

    ``text``: the answer (the refusal text when ``blocked``); ``tokens``: generated token ids (an end-of-turn
    token included when one was generated, as ``model.generate`` does; empty when blocked).
    """

    verdict: Verdict
    text: str
    tokens: tuple[int, ...]
    usage: Usage
    blocked: bool
    finish_reason: FinishReason


GuardedEvent = Verdict | GuardedChunk | GuardedResult
"""What :func:`guarded_stream` yields: one :class:`Verdict`, then chunks, then one :class:`GuardedResult`."""


class _StopPrefill(Exception):
    """Raised by the decision hook to stop a blocked prompt's prefill after the last layer read."""


def guarded_generate(
    guard: LatentGuard,
    prompt: Prompt,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
    on_block: OnBlock = "refuse",
    refusal: str = DEFAULT_REFUSAL,
    seed: int | None = None,
    cancel: threading.Event | None = None,
) -> GuardedResult:
    """Judge ``prompt`` and, unless blocked, answer it from the same prefill.

    Args:
        guard: the fitted guard; its host generates.
        prompt: a string or a list of ``{"role", "content"}`` messages ending with a user message.
        max_new_tokens: most tokens to generate (fewer when the context is full).
        temperature: 0 for greedy decoding, else sampling from ``softmax(logits / temperature)``.
        stop: strings that end the answer (not included in the text).
        on_block: ``"refuse"`` (return ``refusal`` with ``blocked=True``), ``"raise"``
            (:class:`LatentGuardBlocked`), or ``"steer"`` (the host answers in its own words with the refusal
            direction added at ``guard.settings.steer_layer``; a second pass, only for blocked prompts; the text is
            whatever the steered host says — ``blocked=True`` either way).
        seed: seed of the sampler (temperature > 0), for reproducible samples.
        cancel: set it from another thread to stop decoding at the next token (``finish_reason="cancelled"``).

    Raises:
        InputError: bad prompt or settings.
        LatentGuardBlocked: the prompt is blocked and ``on_block == "raise"``.
    """
    final: GuardedResult | None = None
    for event in guarded_stream(guard, prompt, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                                on_block=on_block, refusal=refusal, seed=seed, cancel=cancel):
        if isinstance(event, GuardedResult):
            final = event
    if final is None:  # pragma: no cover - guarded_stream always ends with a result
        raise RuntimeError("guarded generation ended without a result")
    return final


def guarded_stream(
    guard: LatentGuard,
    prompt: Prompt,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
    on_block: OnBlock = "refuse",
    refusal: str = DEFAULT_REFUSAL,
    seed: int | None = None,
    cancel: threading.Event | None = None,
) -> Generator[GuardedEvent, None, None]:
    """Like :func:`guarded_generate`, step by step: the :class:`Verdict` first (before any token), then a
    :class:`GuardedChunk` per generated token, then the :class:`GuardedResult`.

    The host's lock is held from the prefill until the generator finishes or is closed, so consume it from
    one thread (closing it early releases the lock).
    """
    stops = _check_arguments(max_new_tokens, temperature, stop, on_block, refusal)
    if on_block == "steer":
        _steering_for(guard)  # no refusal direction or a bad steer_layer: fail before any model work
    encoding = guard.encode(prompt)  # InputError for bad prompts, before any model work
    host = guard.host
    with host.lock:
        verdict, logits, cache = _prefill(guard, encoding)
        yield verdict
        prompt_tokens = len(encoding.input_ids)
        if verdict.harmful:
            if on_block == "raise":
                raise LatentGuardBlocked(verdict)
            if on_block == "steer":
                yield from _steered(guard, verdict, encoding, max_new_tokens=max_new_tokens, temperature=temperature,
                                    stops=stops, seed=seed, cancel=cancel, refusal=refusal)
                return
            yield GuardedChunk(text=refusal, token_ids=())
            yield GuardedResult(verdict=verdict, text=refusal, tokens=(), usage=Usage(prompt_tokens, 0),
                                blocked=True, finish_reason="blocked")
            return
        if logits is None:  # the pass failed and the failure policy allowed: nothing to continue from
            raise LatentGuardError(f"the prefill failed ({verdict.error}); the failure policy allowed the prompt, "
                                   "but there is no pass to generate from")
        yield from _decode(guard, verdict, encoding, logits, cache, max_new_tokens=max_new_tokens,
                           temperature=temperature, stops=stops, seed=seed, cancel=cancel)


def steered_refusal(guard: LatentGuard, prompt: Prompt, *, max_new_tokens: int = 64) -> GuardedResult:
    """The host's own (greedy) answer to ``prompt`` steered along the guard's refusal direction, without a check.

    What ``on_block="steer"`` answers with; adapters that have already judged a prompt call this. Unless
    ``guard.settings.steer_fallback`` is off, a steered answer that does not read as a refusal (phrase judge) is
    replaced by :data:`DEFAULT_REFUSAL`: a blocked prompt is never answered with anything else. The result's
    ``verdict`` is the guard's verdict for ``prompt`` (read in the same steered pass is not possible — steering
    changes the states — so it is computed by :meth:`LatentGuard.check` first).

    Raises:
        ArtifactError: the guard has no refusal direction. LayerError: ``steer_layer`` out of range.
    """
    _check_arguments(max_new_tokens, 0.0, None, "steer", DEFAULT_REFUSAL)
    _steering_for(guard)
    encoding = guard.encode(prompt)
    with guard.host.lock:
        verdict = guard.check(prompt)
        final: GuardedResult | None = None
        for event in _steered(guard, verdict, encoding, max_new_tokens=max_new_tokens, temperature=0.0, stops=(),
                              seed=None, cancel=None, refusal=DEFAULT_REFUSAL):
            if isinstance(event, GuardedResult):
                final = event
    if final is None:  # pragma: no cover - _steered always ends with a result
        raise RuntimeError("steered generation ended without a result")
    return final


# ------------------------------------------------------------------------------------------------ internals

def _steering_for(guard: LatentGuard) -> tuple[Any, int, float]:
    """The refusal direction, the resolved steer layer and the coefficient of ``guard.settings``."""
    from .steering import Direction, default_steer_layer  # steering sits above guard; imported when used

    direction = Direction.from_guard(guard, "refusal")
    wanted = guard.settings.steer_layer
    (layer,) = check_layers([default_steer_layer(guard.num_blocks) if wanted is None else wanted], guard.num_blocks)
    return direction, layer, guard.settings.steer_coeff


def _steered(guard: LatentGuard, verdict: Verdict, encoding: PromptEncoding, *, max_new_tokens: int,
             temperature: float, stops: Sequence[str], seed: int | None, cancel: threading.Event | None,
             refusal: str) -> Iterator[GuardedEvent]:
    """A full prefill and decoding with the refusal direction added at every position. Callers hold the lock.

    With ``guard.settings.steer_fallback`` (the default) the answer is generated in full first and kept only when
    the phrase judge reads it as a refusal, else ``refusal`` is answered: steering that fails to make the host
    refuse must not let it answer a blocked prompt. Then the text arrives as one chunk.
    """
    from .refusal import is_refusal

    events = _steered_events(guard, verdict, encoding, max_new_tokens=max_new_tokens, temperature=temperature,
                             stops=stops, seed=seed, cancel=cancel)
    if not guard.settings.steer_fallback:
        yield from events
        return
    try:
        final = next(event for event in events if isinstance(event, GuardedResult))
    finally:
        events.close()  # leaves the steering scope: its hooks are removed now, not when collected
    if not is_refusal(final.text):
        logger.info("the steered answer is not a refusal; answering the canned refusal instead",
                    extra={"reason": "steer_fallback"})
        final = GuardedResult(verdict=final.verdict, text=refusal, tokens=(), usage=Usage(final.usage.input_tokens, 0),
                              blocked=True, finish_reason="blocked")
    yield GuardedChunk(text=final.text, token_ids=final.tokens)
    yield final


def _steered_events(guard: LatentGuard, verdict: Verdict, encoding: PromptEncoding, *, max_new_tokens: int,
                    temperature: float, stops: Sequence[str], seed: int | None,
                    cancel: threading.Event | None) -> Generator[GuardedEvent, None, None]:
    from .steering import steer

    direction, layer, coeff = _steering_for(guard)
    model = guard.host.model
    device = input_device(model)
    input_ids = torch.tensor([encoding.input_ids], dtype=torch.long, device=device)
    with steer(guard, direction, layer=layer, coeff=coeff, positions="all"):
        with torch.inference_mode():
            output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True,
                           logits_to_keep=1)
        yield from _decode(guard, verdict, encoding, output.logits[:, -1, :], _cache_of(output),
                           max_new_tokens=max_new_tokens, temperature=temperature, stops=stops, seed=seed,
                           cancel=cancel, blocked=True)


def _check_arguments(max_new_tokens: int, temperature: float, stop: Sequence[str] | None, on_block: str,
                     refusal: str) -> tuple[str, ...]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if on_block not in _ON_BLOCK:
        raise InputError(f"on_block must be one of {', '.join(_ON_BLOCK)}, got {on_block!r}")
    if not isinstance(refusal, str):
        raise InputError(f"refusal must be a str, got {type(refusal).__name__}")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    stops = tuple(stop)
    for item in stops:
        if not isinstance(item, str) or not item:
            raise InputError(f"stop sequences must be non-empty strings, got {item!r}")
    return stops


@contextmanager
def _decision_hook(model: nn.Module, layer_template: str | None, last_layer: int,
                   decide: Any) -> Iterator[None]:
    """Call ``decide()`` right after the capture hooks have recorded ``last_layer`` (registered after them)."""
    blocks = decoder_blocks(model, layer_template)
    owner = threading.get_ident()
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def hook(*_args: Any) -> None:
        if threading.get_ident() == owner:
            decide()

    try:
        if last_layer < len(blocks):
            handles.append(blocks[last_layer].register_forward_pre_hook(hook))
        else:
            handles.append(blocks[-1].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _prefill(guard: LatentGuard, encoding: PromptEncoding) -> tuple[Verdict, torch.Tensor | None, Any]:
    """The one forward pass: verdict from the hooks; logits ``(1, vocab)`` and KV cache unless blocked.

    Callers hold ``guard.host.lock``.
    """
    model = guard.host.model
    device = input_device(model)
    points, pooled, order = view_slots(guard.views)
    positions = torch.tensor([[getattr(encoding, name) for name in points]], dtype=torch.long)
    spans = torch.tensor([[[encoding.t_content_start, encoding.t_inst]] * len(pooled)], dtype=torch.long) \
        if pooled else None
    input_ids = torch.tensor([encoding.input_ids], dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    template = guard.fitted.layer_template
    decided: list[Verdict] = []

    def decide(result: Capture) -> None:
        if decided or not result.complete:
            return
        try:
            verdict = guard.verdicts_from_states([encoding], result.stacked()[:, order])[0]
        except (LatentGuardError, RuntimeError) as exc:
            verdict = _failure(guard, exc)
        decided.append(verdict)
        if verdict.harmful:
            raise _StopPrefill

    try:
        with capture(model, guard.layers, positions, layer_template=template, spans=spans) as result, \
                _decision_hook(model, template, max(guard.layers), lambda: decide(result)):
            try:
                with torch.inference_mode():
                    output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                                   logits_to_keep=1)
            except _StopPrefill:
                return decided[0], None, None
    except Exception as exc:  # the pass itself failed (any exception): the failure policy decides
        if decided:
            raise
        return _failure(guard, exc), None, None
    if not decided:
        return _failure(guard, RuntimeError("the forward pass did not reach the guard's layers")), None, None
    return decided[0], output.logits[:, -1, :], _cache_of(output)


def _failure(guard: LatentGuard, exc: Exception) -> Verdict:
    """The failure policy's verdict (``on_error="raise"`` re-raises), as in :meth:`LatentGuard.check_batch`."""
    return guard.failure_verdict(exc)


def _end_ids(guard: LatentGuard) -> set[int]:
    """Token ids that end the answer: the generation config's EOS id(s) and the tokenizer's EOS."""
    ids: set[int] = set()
    config = getattr(guard.host.model, "generation_config", None)
    value = getattr(config, "eos_token_id", None) if config is not None else None
    for item in value if isinstance(value, list | tuple) else [value]:
        if isinstance(item, int):
            ids.add(item)
    if isinstance(guard.host.tokenizer.eos_token_id, int):
        ids.add(guard.host.tokenizer.eos_token_id)
    return ids


def _cache_argument(model: nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    """The KV cache returned by a forward pass (``cache`` or, before transformers 5.24, ``past_key_values``)."""
    value = getattr(output, "cache", None)
    return value if value is not None else getattr(output, "past_key_values", None)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could start a stop sequence (not yet safe to emit)."""
    keep = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:size]):
                keep = size
                break
    return keep


def _decode(guard: LatentGuard, verdict: Verdict, encoding: PromptEncoding, logits: torch.Tensor, cache: Any, *,
            max_new_tokens: int, temperature: float, stops: Sequence[str], seed: int | None,
            cancel: threading.Event | None, blocked: bool = False) -> Iterator[GuardedEvent]:
    """Decode from the prefill's ``logits`` ``(1, vocab)`` and KV ``cache``, one token per step.

    ``blocked``: a steered refusal — the result says ``blocked=True`` and ``finish_reason="blocked"``.
    """
    model, tokenizer = guard.host.model, guard.host.tokenizer
    device = input_device(model)
    prompt_tokens = len(encoding.input_ids)
    limit = guard.host.max_positions
    budget = max_new_tokens if limit is None else max(0, min(max_new_tokens, limit - prompt_tokens))
    end_ids = _end_ids(guard)
    cache_name = _cache_argument(model)
    generator: torch.Generator | None = None
    if temperature > 0:
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(seed if seed is not None else int(torch.seed()))
    tokens: list[int] = []
    emitted = 0
    text = ""
    reason: FinishReason = "length"
    with torch.inference_mode():
        for step in range(budget):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            token = _select(logits, temperature, generator)
            tokens.append(token)
            if token in end_ids:
                reason = "stop"
                break
            text = str(tokenizer.decode(tokens, skip_special_tokens=True))
            cut = min((index for index in (text.find(s) for s in stops) if index >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                yield GuardedChunk(text=text[emitted:], token_ids=(token,))
                emitted = len(text)
                reason = "stop"
                break
            safe = len(text) - _held_back(text, stops)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                safe = min(safe, len(text.rstrip("\ufffd")))
            yield GuardedChunk(text=text[emitted:safe] if safe > emitted else "", token_ids=(token,))
            emitted = max(emitted, safe)
            if step + 1 == budget:
                break
            total = prompt_tokens + len(tokens)
            output = model(input_ids=torch.tensor([[token]], dtype=torch.long, device=device),
                           attention_mask=torch.ones((1, total), dtype=torch.long, device=device),
                           use_cache=True, **{cache_name: cache})
            logits, cache = output.logits[:, -1, :], _cache_of(output)
    if emitted < len(text):  # flush what was held back for a possible stop sequence
        yield GuardedChunk(text=text[emitted:], token_ids=())
    yield GuardedResult(verdict=verdict, text=text, tokens=tuple(tokens), usage=Usage(prompt_tokens, len(tokens)),
                        blocked=blocked, finish_reason="blocked" if blocked else reason)


def _select(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Next token from logits ``(1, vocab)``: argmax, or a sample at ``temperature``."""
    if temperature == 0 or generator is None:
        return int(logits[0].argmax())
    probs = torch.softmax(logits[0].float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
