"""Guarded generation: the guard's verdict and the answer come from **one** prefill.

The prompt runs through the host once, with capture hooks on the layers the guard reads. In a hook placed
right after the last of those layers the verdict is computed from the captured states; a blocking verdict
stops the pass there (the blocks above it and the LM head never run). An allowed prompt lets the same pass
finish with ``use_cache=True``; its logits and KV cache feed the package's one decoding loop
(:func:`latent_guardrail.decoding.decode`: greedy or temperature sampling, stop sequences, cancel), so there is
never a second prefill. The host's lock is held for the whole generation.

Normalisation (``GuardSettings.normalize``): the host answers the text **as typed**, so the prefill reads the
typed text. When normalising changes it (zero-width or control characters, look-alike letters, full-width
forms), the guard also judges the normalised text in one more pass and blocks if either verdict blocks; the
verdict returned is the normalised one (``verdict.normalized``). Case folding (``case_fold``, on for the
default guard) and the closing full stop (``close_sentences``, on for the default guard) are not applied here:
the typed text's own prefill judges it, so ordinary text still costs exactly one prefill — scores can differ
slightly from :meth:`LatentGuard.check` on text with capitals or without a final stop.

Typical use::

    result = guarded_generate(guard, "How do I kill a stuck process?", max_new_tokens=64)
    result.blocked, result.verdict.score, result.text

    for event in guarded_stream(guard, prompt, max_new_tokens=64):
        ...  # first a Verdict, then GuardedChunk per token, last the GuardedResult
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from . import refusal as refusal_judge
from .activations import Capture, capture, run_capture
from .answers import ends_sentence, monitor_answer
from .decoding import CallOptions, Decoded, call_options, check_max_new_tokens, decode, prefill
from .errors import InputError, LatentGuardError
from .guard import LatentGuard
from .layers import check_layers, decoder_blocks
from .positions import Prompt, PromptEncoding, pad_batch
from .response import ResponseScore, ResponseTracker
from .steering import Direction, default_steer_layer, steer
from .streaming import drain
from .verdict import Verdict
from .views import ViewLayout

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
    "judged_stream",
    "steered_refusal",
]

logger = logging.getLogger(__name__)

DEFAULT_REFUSAL = "I'm sorry, I can't help with that."
OnBlock = Literal["refuse", "raise", "steer"]
FinishReason = Literal["stop", "length", "blocked", "blocked_output", "cancelled"]
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
    token included when one was generated, as ``model.generate`` does; empty when blocked; the tokens generated
    before the stop when the output check stopped the answer).

    ``output_verdict``: with the output check (``check_output=True``), the response verdict (``target="response"``)
    of the answer — the one that stopped it (``finish_reason="blocked_output"``, ``blocked=True``, ``text`` the
    refusal) or the answer's final reading when it passed; None without the output check.
    """

    verdict: Verdict
    text: str
    tokens: tuple[int, ...]
    usage: Usage
    blocked: bool
    finish_reason: FinishReason
    output_verdict: Verdict | None = None


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
    check_output: bool = False,
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
        check_output: also judge the answer while it is generated (the guard's response scorer, from the states
            the decoding steps compute — no extra pass): a harmful answer stops at the check point that crosses
            the response threshold and ends with ``refusal`` (``finish_reason="blocked_output"``, the response
            verdict in ``output_verdict``).

    Raises:
        InputError: bad prompt or settings.
        LatentGuardBlocked: the prompt is blocked and ``on_block == "raise"``.
    """
    return drain(guarded_stream(guard, prompt, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop,
                                on_block=on_block, refusal=refusal, seed=seed, cancel=cancel,
                                check_output=check_output),
                 GuardedResult, "guarded generation")


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
    check_output: bool = False,
) -> Generator[GuardedEvent, None, None]:
    """Like :func:`guarded_generate`, step by step: the :class:`Verdict` first (before any token), then a
    :class:`GuardedChunk` per generated token, then the :class:`GuardedResult`.

    The host's lock is held from the prefill until the generator finishes or is closed, so consume it from
    one thread (closing it early releases the lock).
    """
    options = call_options(max_new_tokens, temperature, seed, stop)
    _check_block(on_block, refusal)
    if on_block == "steer":
        _steering_for(guard)  # no refusal direction or a bad steer_layer: fail before any model work
    if check_output:
        guard.response_threshold  # noqa: B018 - no response part: ArtifactError before any model work
    encoding = guard.encode(prompt, normalize=False)  # InputError for bad prompts, before any model work
    # case folding or a closing full stop alone never costs a second pass: the prefill of the typed text judges it
    judged = guard.encode(prompt, case_fold=False, close=False) if guard.settings.normalize else encoding
    host = guard.host
    scorer = guard._response_scorer() if check_output else None
    with host.lock:
        verdict, logits, cache, prompt_state = _prefill(
            guard, encoding, scorer.layers if scorer is not None and scorer.reads_prompt else None)
        if judged.normalized and not verdict.harmful:
            # the host answers the text as typed; the guard also judges the normalised text (one more pass,
            # only when normalising changed something), and either one blocking blocks
            verdict = guard.check_encodings([judged])[0]
        pieces = guard.readings(prompt) if not verdict.harmful else []
        if pieces:
            # typed turns, quoted values, joined turns (and segments): each piece judged alone, one more batch
            # only for such prompts
            verdict = guard.worst_reading(verdict, pieces, guard.check_encodings([r.encoding for r in pieces]))
        if verdict.harmful:
            logits = cache = None  # the prefill's cache is not answered from: release it before any steered pass
        yield verdict
        if verdict.harmful:
            yield from _blocked(guard, verdict, encoding.input_ids, options, on_block, refusal, cancel)
            return
        if logits is None:  # the pass failed and the failure policy allowed: nothing to continue from
            raise LatentGuardError(f"the prefill failed ({verdict.error}); the failure policy allowed the prompt, "
                                   "but there is no pass to generate from")
        yield from _decode(guard, verdict, encoding, logits, cache, options, cancel=cancel,
                           check_output=check_output, refusal=refusal, prompt_state=prompt_state)


def judged_stream(
    guard: LatentGuard,
    judged: Sequence[Prompt],
    input_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    stop: Sequence[str] | None = None,
    on_block: OnBlock = "refuse",
    refusal: str = DEFAULT_REFUSAL,
    seed: int | None = None,
    cancel: threading.Event | None = None,
    check_output: bool = False,
) -> Generator[GuardedEvent, None, None]:
    """Like :func:`guarded_stream` for an answer prompt the guard does not read as it is (tools rendered in it).

    The guard judges each prompt of ``judged`` (one :meth:`LatentGuard.check_batch`: the same verdicts as
    :meth:`LatentGuard.check`); the verdict yielded is the first blocking one, else the first. Unless it blocks,
    the host answers ``input_ids`` (the rendered answer prompt ``(seq,)``) from a plain prefill: two passes, as
    the answer prompt differs from what the guard reads. A blocked prompt is answered as in
    :func:`guarded_stream` (a steered refusal is steered on ``input_ids``). The host's lock is held throughout.

    Raises:
        InputError: no prompt to judge, an empty answer prompt, bad options.
        LatentGuardBlocked: a prompt is blocked and ``on_block == "raise"``.
    """
    options = call_options(max_new_tokens, temperature, seed, stop)
    _check_block(on_block, refusal)
    if not judged:
        raise InputError("judged_stream needs at least one prompt to judge")
    if len(input_ids) == 0:
        raise InputError("the answer prompt has no tokens")
    if on_block == "steer":
        _steering_for(guard)
    if check_output:
        guard.response_threshold  # noqa: B018 - no response part: ArtifactError before any model work
    ids = tuple(int(token) for token in input_ids)
    scorer = guard._response_scorer() if check_output else None
    with guard.host.lock:
        verdicts = guard.check_batch(list(judged))
        verdict = next((v for v in verdicts if v.harmful), verdicts[0])
        yield verdict
        if verdict.harmful:
            yield from _blocked(guard, verdict, ids, options, on_block, refusal, cancel)
            return
        # a response scorer that reads the prompt reads the first judged prompt's t_inst as the guard renders it
        # (the answer prompt, tools rendered in it, has no t_inst the guard knows): a partial pass
        prompt_state = _prompt_state(guard, judged[0], scorer.layers) if scorer and scorer.reads_prompt else None
        logits, cache = prefill(guard.host.model, ids)
        yield from _decode(guard, verdict, ids, logits, cache, options, cancel=cancel, check_output=check_output,
                           refusal=refusal, prompt_state=prompt_state)


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
    options = CallOptions(max_new_tokens=check_max_new_tokens(max_new_tokens))
    _steering_for(guard)
    encoding = guard.encode(prompt)
    with guard.host.lock:
        verdict = guard.check(prompt)
        return drain(_steered(guard, verdict, encoding.input_ids, options, cancel=None, refusal=DEFAULT_REFUSAL),
                     GuardedResult, "steered generation")


# ------------------------------------------------------------------------------------------------ internals

def _blocked(guard: LatentGuard, verdict: Verdict, input_ids: Sequence[int], options: CallOptions,
             on_block: OnBlock, refusal: str, cancel: threading.Event | None) -> Generator[GuardedEvent, None, None]:
    """What a blocked prompt gets (the host's lock held): raise, a steered refusal on ``input_ids`` ``(seq,)``,
    or the canned ``refusal`` as one chunk and a ``blocked`` result."""
    if on_block == "raise":
        raise LatentGuardBlocked(verdict)
    if on_block == "steer":
        yield from _steered(guard, verdict, input_ids, options, cancel=cancel, refusal=refusal)
        return
    yield GuardedChunk(text=refusal, token_ids=())
    yield GuardedResult(verdict=verdict, text=refusal, tokens=(), usage=Usage(len(input_ids), 0),
                        blocked=True, finish_reason="blocked")


def _steering_for(guard: LatentGuard) -> tuple[Direction, int, float]:
    """The refusal direction, the resolved steer layer and the coefficient of ``guard.settings``."""
    direction = Direction.from_guard(guard, "refusal")
    wanted = guard.settings.steer_layer
    (layer,) = check_layers([default_steer_layer(guard.num_blocks) if wanted is None else wanted], guard.num_blocks)
    return direction, layer, guard.settings.steer_coeff


def _steered(guard: LatentGuard, verdict: Verdict, input_ids: Sequence[int], options: CallOptions, *,
             cancel: threading.Event | None, refusal: str) -> Iterator[GuardedEvent]:
    """A full prefill and decoding with the refusal direction added at every position. Callers hold the lock.

    With ``guard.settings.steer_fallback`` (the default) the answer is generated in full first and kept only when
    the phrase judge reads it as a refusal, else ``refusal`` is answered: steering that fails to make the host
    refuse must not let it answer a blocked prompt. Then the text arrives as one chunk.
    """
    events = _steered_events(guard, verdict, input_ids, options, cancel=cancel)
    if not guard.settings.steer_fallback:
        yield from events
        return
    # drain closes the events: the steering scope is left (its hooks removed) now, not when collected
    final = drain(events, GuardedResult, "steered generation")
    if not refusal_judge.is_refusal(final.text):
        logger.info("the steered answer is not a refusal; answering the canned refusal instead",
                    extra={"reason": "steer_fallback"})
        final = GuardedResult(verdict=final.verdict, text=refusal, tokens=(), usage=Usage(final.usage.input_tokens, 0),
                              blocked=True, finish_reason="blocked")
    yield GuardedChunk(text=final.text, token_ids=final.tokens)
    yield final


def _steered_events(guard: LatentGuard, verdict: Verdict, input_ids: Sequence[int], options: CallOptions, *,
                    cancel: threading.Event | None) -> Generator[GuardedEvent, None, None]:
    """The steered pass: a plain prefill and the decoding loop inside one ``steer(..., positions="all")`` scope."""
    direction, layer, coeff = _steering_for(guard)
    with steer(guard, direction, layer=layer, coeff=coeff, positions="all"):
        logits, cache = prefill(guard.host.model, input_ids)
        yield from _decode(guard, verdict, input_ids, logits, cache, options, cancel=cancel, blocked=True)


def _check_block(on_block: str, refusal: str) -> None:
    """Validate what a blocked prompt gets (the call options are :func:`~latent_guardrail.decoding.call_options`)."""
    if on_block not in _ON_BLOCK:
        raise InputError(f"on_block must be one of {', '.join(_ON_BLOCK)}, got {on_block!r}")
    if not isinstance(refusal, str):
        raise InputError(f"refusal must be a str, got {type(refusal).__name__}")


@contextmanager
def _decision_hook(model: nn.Module, layer_template: str | None, last_layer: int,
                   decide: Callable[[], None]) -> Iterator[None]:
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


def _prefill(guard: LatentGuard, encoding: PromptEncoding, prompt_layers: Sequence[int] | None = None
             ) -> tuple[Verdict, torch.Tensor | None, Any, torch.Tensor | None]:
    """The one forward pass: verdict from the hooks; logits ``(1, vocab)`` and KV cache unless blocked; with
    ``prompt_layers``, the prompt's state at ``t_inst`` on them ``(layers, d)`` (what a response scorer that
    reads the prompt needs; recorded by the same pass), else None.

    Callers hold ``guard.host.lock``.
    """
    model = guard.host.model
    layout = ViewLayout.of(guard.views)
    positions, spans = layout.locate(pad_batch([encoding], guard.host.tokenizer.pad_token_id))
    order = list(layout.order)
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
        with ExitStack() as stack:
            result = stack.enter_context(capture(model, guard.layers, positions, layer_template=template,
                                                 spans=spans))
            prompt = None if not prompt_layers else stack.enter_context(
                capture(model, prompt_layers, torch.tensor([[encoding.t_inst]]), layer_template=template))
            stack.enter_context(_decision_hook(model, template, max(guard.layers), lambda: decide(result)))
            try:
                logits, cache = prefill(model, encoding.input_ids)
            except _StopPrefill:
                return decided[0], None, None, None
    except Exception as exc:  # the pass itself failed (any exception): the failure policy decides
        if decided:
            raise
        return _failure(guard, exc), None, None, None
    if not decided:
        return (_failure(guard, RuntimeError("the forward pass did not reach the guard's layers")), None, None,
                None)
    return decided[0], logits, cache, None if prompt is None else prompt.stacked()[0, 0]


def _prompt_state(guard: LatentGuard, prompt: Prompt, layers: Sequence[int]) -> torch.Tensor:
    """The state ``(len(layers), d)`` at ``t_inst`` of ``prompt`` as the host reads it when it answers (not
    normalised): one pass, stopped after the last of ``layers``. Callers hold ``guard.host.lock``."""
    encoding = guard.encode(prompt, normalize=False)
    batch = pad_batch([encoding], guard.host.tokenizer.pad_token_id)
    return run_capture(guard.host.model, batch.input_ids, batch.attention_mask, layers,
                       torch.tensor([[encoding.t_inst]]), layer_template=guard.fitted.layer_template).stacked()[0, 0]


def _failure(guard: LatentGuard, exc: Exception) -> Verdict:
    """The failure policy's verdict (``on_error="raise"`` re-raises), as in :meth:`LatentGuard.check_batch`."""
    return guard.failure_verdict(exc)


def _decode(guard: LatentGuard, verdict: Verdict, prompt: PromptEncoding | Sequence[int], logits: torch.Tensor,
            cache: Any, options: CallOptions, *, cancel: threading.Event | None, blocked: bool = False,
            check_output: bool = False, refusal: str = DEFAULT_REFUSAL, prompt_state: torch.Tensor | None = None
            ) -> Iterator[GuardedEvent]:
    """:func:`~latent_guardrail.decoding.decode` from the prefill's ``logits`` ``(1, vocab)`` and KV ``cache``,
    as guarded events: a :class:`GuardedChunk` per step, then the :class:`GuardedResult`.

    ``prompt``: the prompt's encoding (or its token ids ``(seq,)``). ``blocked``: a steered refusal — the result
    says ``blocked=True`` and ``finish_reason="blocked"``. ``check_output``: the answer is judged on the way
    (:func:`_judged_decode`; ``prompt_state`` the prompt's ``t_inst`` state on the response scorer's layers
    ``(layers, d)`` when it reads one).
    """
    if check_output:
        yield from _judged_decode(guard, verdict, prompt, logits, cache, options, cancel=cancel, refusal=refusal,
                                  prompt_state=prompt_state)
        return
    input_ids = prompt.input_ids if isinstance(prompt, PromptEncoding) else prompt
    host = guard.host
    prompt_tokens = len(input_ids)
    for item in decode(host.model, host.tokenizer, logits, cache, prompt_tokens=prompt_tokens, options=options,
                       max_positions=host.max_positions, cancel=cancel):
        if isinstance(item, Decoded):
            yield GuardedResult(verdict=verdict, text=item.text, tokens=item.tokens,
                                usage=Usage(prompt_tokens, len(item.tokens)), blocked=blocked,
                                finish_reason="blocked" if blocked else item.finish_reason)
        else:
            yield GuardedChunk(text=item.text, token_ids=item.token_ids)


def _judged_decode(guard: LatentGuard, verdict: Verdict, prompt: PromptEncoding | Sequence[int],
                   logits: torch.Tensor, cache: Any, options: CallOptions, *, cancel: threading.Event | None,
                   refusal: str, prompt_state: torch.Tensor | None = None) -> Iterator[GuardedEvent]:
    """The decoding loop with the output check: hooks on the response scorer's layers record the state of every
    token the decoding steps feed back (:func:`~latent_guardrail.answers.monitor_answer`; no pass is added), a
    :class:`~latent_guardrail.response.ResponseTracker` scores them at the view's check points, and the first
    check point at or above the response threshold stops the answer: the refusal follows as the last chunk and
    the result says ``finish_reason="blocked_output"`` with the response verdict.

    Answer token ``k``'s state is computed by the step that generates token ``k + 1``, so a token's chunk is held
    back until the token before it has been judged; the answer's final reading uses the last state computed.
    """
    host = guard.host
    scorer = guard._response_scorer()
    threshold = guard.response_threshold
    input_ids = prompt.input_ids if isinstance(prompt, PromptEncoding) else tuple(prompt)
    context = prompt if isinstance(prompt, PromptEncoding) else None
    prompt_tokens = len(input_ids)
    tracker = ResponseTracker(scorer, prompt_state)
    tokens: list[int] = []
    judged = 0

    def output_verdict(scored: ResponseScore) -> Verdict:
        if context is not None:
            return guard.response_verdict(context, tracker.count, scored)
        return guard.response_verdict(_ids_only(input_ids), tracker.count, scored)

    with monitor_answer(host.model, scorer.layers, layer_template=guard.fitted.layer_template) as monitor:
        steps = decode(host.model, host.tokenizer, logits, cache, prompt_tokens=prompt_tokens, options=options,
                       max_positions=host.max_positions, cancel=cancel)
        try:
            for item in steps:
                stop: ResponseScore | None = None
                while judged < len(monitor.states) and judged < len(tokens) and stop is None:
                    piece = str(host.tokenizer.decode([tokens[judged]], skip_special_tokens=False))
                    scored = tracker.add(monitor.states[judged], ends_sentence(piece))
                    judged += 1
                    if scored is not None and scored.score >= threshold:
                        stop = scored
                if stop is not None:
                    final = output_verdict(stop)
                    logger.info("latent guard: the answer was stopped by the output check (%s)", final.summary(),
                                extra={"reason": "blocked_output"})
                    yield GuardedChunk(text=refusal, token_ids=())
                    yield GuardedResult(verdict=verdict, text=refusal, tokens=tuple(tokens),
                                        usage=Usage(prompt_tokens, len(tokens)), blocked=True,
                                        finish_reason="blocked_output", output_verdict=final)
                    return
                if isinstance(item, Decoded):
                    last = tracker.final()
                    yield GuardedResult(verdict=verdict, text=item.text, tokens=item.tokens,
                                        usage=Usage(prompt_tokens, len(item.tokens)), blocked=False,
                                        finish_reason=item.finish_reason,
                                        output_verdict=None if last is None else output_verdict(last))
                else:
                    tokens.extend(item.token_ids)
                    yield GuardedChunk(text=item.text, token_ids=item.token_ids)
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()


def _ids_only(input_ids: Sequence[int]) -> PromptEncoding:
    """A stand-in encoding of a rendered prompt the guard did not encode (tools rendered in it): its tokens only."""
    text = " "
    return PromptEncoding(input_ids=tuple(input_ids), t_inst=len(input_ids) - 1, t_post_inst=len(input_ids) - 1,
                          text=text, content_span=(0, 1), t_content_start=len(input_ids) - 1)
