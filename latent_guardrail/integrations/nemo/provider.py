"""``LatentHostModel``: a local transformers host as NeMo's main LLM (NeMo 0.24's ``LLMModel`` protocol).

In a config (the provider is registered by the rail folder's ``init`` or by :func:`register_provider`)::

    models:
      - type: main
        engine: latent_guardrail
        model: default              # the host: "default", an HF id, a local folder or a .gguf file
        parameters:
          max_new_tokens: 128
          guard: default            # the guard read in the prefill (an artifact folder for other hosts)

or in code: ``LLMRails(config, llm=LatentHostModel(guard))``. Each answer is a guarded generation: the verdict
comes from the answer's own prefill (``guarded: false`` generates plainly). With ``passthrough: true`` and the
rail on the same host, the rail's prefill already produced the answer: :meth:`LatentHostModel.generate_async`
returns it instead of running the prompt again (see :class:`PreparedAnswers`).

Generation runs in a worker thread (:func:`~latent_guardrail.streaming.call_in_thread`, or
:func:`~latent_guardrail.streaming.iterate_in_thread` for streams); the host lock serialises work on the model, and
a cancelled call stops decoding at the next token. Both paths decode with the package's one loop
(:mod:`latent_guardrail.decoding`); call options are validated there, once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from nemoguardrails.types import ChatMessage, LLMResponse, LLMResponseChunk, UsageInfo
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latent_guardrail.decoding import CallOptions, call_options, generate
from latent_guardrail.errors import InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import DEFAULT_REFUSAL, GuardedChunk, GuardedResult, Usage, guarded_stream
from latent_guardrail.integrations.nemo.loading import NemoConfigError, resolve_guard_path, shared_guard
from latent_guardrail.messages import content_text, guard_role, require_user_last
from latent_guardrail.positions import Message, Prompt
from latent_guardrail.streaming import call_in_thread, drain, iterate_in_thread
from latent_guardrail.verdict import Verdict

__all__ = ["PROVIDER_NAME", "CallOptions", "HostModelOptions", "LatentHostModel", "OutputVerdicts", "PreparedAnswers",
           "prompt_from_nemo", "register_provider"]

logger = logging.getLogger(__name__)

PROVIDER_NAME = "latent_guardrail"
"""The ``engine`` name of the provider in a NeMo config."""

METADATA_KEY = "latent_guard"
OUTPUT_METADATA_KEY = "latent_guard_output"
_FINISH = {"stop": "stop", "length": "length", "blocked": "content_filter", "blocked_output": "content_filter",
           "cancelled": "other"}
_IGNORED_CALL_OPTIONS = frozenset({"top_p", "top_k", "n", "presence_penalty", "frequency_penalty", "logprobs"})


class HostModelOptions(BaseModel):
    """``parameters`` of a ``latent_guardrail`` model in a NeMo config (``extra="forbid"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    guard: str = Field(default="default", min_length=1,
                       description="'default' or a guard artifact folder fitted for this host.")
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0.0, le=100.0, allow_inf_nan=False,
                               description="0 = greedy; else sampling temperature.")
    seed: int | None = Field(default=None, ge=0, description="Sampler seed (temperature > 0).")
    guarded: bool = Field(default=True,
                          description="Read the guard's verdict in each answer's prefill and refuse blocked prompts "
                                      "(free: same pass); false = plain generation.")
    threshold: float | None = Field(default=None, allow_inf_nan=False,
                                    description="Override of the guard's fitted threshold (null = fitted).")
    refusal: str = Field(default=DEFAULT_REFUSAL, description="The answer to a prompt the guard blocks.")
    check_output: bool = Field(
        default=False, description="Also judge each answer while it is generated (the guard's response scorer, from "
                                   "the decoding steps' own states: no extra pass); a harmful answer stops and ends "
                                   "with `refusal`. The `latent guard check output` rail then reuses that verdict.")


@dataclass(frozen=True)
class _Answer:
    """One answer: the text, and the guard's verdict when the prefill was read (None for plain generation)."""

    text: str
    usage: Usage
    finish_reason: str
    blocked: bool
    verdict: Verdict | None
    output_verdict: Verdict | None = None

    @classmethod
    def of(cls, result: GuardedResult) -> _Answer:
        return cls(text=result.text, usage=result.usage, finish_reason=result.finish_reason, blocked=result.blocked,
                   verdict=result.verdict, output_verdict=result.output_verdict)


def prompt_from_nemo(prompt: str | Sequence[ChatMessage | Mapping[str, Any]]) -> Prompt:
    """The guard's prompt for what NeMo hands a model: a ``str`` (one user message) or chat messages.

    Tool messages are left out (tool output is not a user instruction); the text parts of a content are joined
    (:func:`latent_guardrail.messages.content_text`).

    Raises:
        InputError: an empty message list, an unknown role, or no user message at the end.
    """
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, Sequence) or not prompt:
        raise InputError("the model needs a prompt: a str or a non-empty list of chat messages")
    messages: list[Message] = []
    for index, item in enumerate(prompt):
        message = item if isinstance(item, ChatMessage) else ChatMessage.from_dict(dict(item))
        name = message.role.value
        if name == "tool":
            continue
        role = guard_role(name)
        if role is None:
            raise InputError(f"message {index}: unsupported role {name!r}")
        messages.append({"role": role, "content": content_text(message.content)})
    require_user_last(messages)
    return messages


def prompt_key(prompt: Prompt) -> str:
    """A canonical string for a prompt (equal prompts, equal keys)."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


class PreparedAnswers:
    """Answers that a passthrough rail produced in its prefill, waiting for the main-LLM call of their request.

    Keyed by the prompt and the generation options; each answer is taken once. Equal prompts with equal options
    get equal answers (greedy decoding), so concurrent identical requests may take each other's — never an answer
    to another prompt. Entries a request never takes (it was cancelled, or a later rail blocked it) expire after
    ``ttl`` seconds; at most ``capacity`` are kept. Failures are never stored. Thread-safe.
    """

    def __init__(self, ttl: float = 120.0, capacity: int = 256) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, CallOptions], deque[tuple[float, GuardedResult]]] = {}
        self._size = 0

    def put(self, prompt: Prompt, options: CallOptions, result: GuardedResult) -> None:
        """Keep ``result`` (an allowed, complete answer, or one the output check stopped) for the main-LLM call of
        ``prompt``."""
        stopped_prompt = result.blocked and result.finish_reason != "blocked_output"
        if stopped_prompt or result.verdict.status != "ok" or result.finish_reason == "cancelled":
            return
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if self._size >= self.capacity:
                oldest = min(self._entries, key=lambda key: self._entries[key][0][0])
                self._pop(oldest)
            self._entries.setdefault((prompt_key(prompt), options), deque()).append((now + self.ttl, result))
            self._size += 1

    def take(self, prompt: Prompt, options: CallOptions) -> GuardedResult | None:
        """The prepared answer for ``prompt`` with ``options``, removed from the store; None if there is none."""
        key = (prompt_key(prompt), options)
        with self._lock:
            self._expire(time.monotonic())
            if key not in self._entries:
                return None
            return self._pop(key)

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def _pop(self, key: tuple[str, CallOptions]) -> GuardedResult:
        queue = self._entries[key]
        _, result = queue.popleft()
        self._size -= 1
        if not queue:
            del self._entries[key]
        return result

    def _expire(self, now: float) -> None:
        for key in [key for key, queue in self._entries.items() if queue[0][0] <= now]:
            queue = self._entries[key]
            while queue and queue[0][0] <= now:
                queue.popleft()
                self._size -= 1
            if not queue:
                del self._entries[key]


class OutputVerdicts:
    """Response verdicts the output check computed while answering, waiting for the output rail of their request.

    Keyed by the prompt and the answer's text (the text the rail is handed); each is taken once, expires after
    ``ttl`` seconds, at most ``capacity`` are kept. Failures are never stored. Thread-safe.
    """

    def __init__(self, ttl: float = 120.0, capacity: int = 256) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[float, Verdict]] = {}

    def put(self, prompt: Prompt, text: str, verdict: Verdict | None) -> None:
        """Keep ``verdict`` (a response verdict with status ok) for the output rail's check of ``text``."""
        if verdict is None or verdict.status != "ok" or verdict.target != "response":
            return
        now = time.monotonic()
        with self._lock:
            self._entries = {key: value for key, value in self._entries.items() if value[0] > now}
            if len(self._entries) >= self.capacity:
                del self._entries[min(self._entries, key=lambda key: self._entries[key][0])]
            self._entries[(prompt_key(prompt), text.strip())] = (now + self.ttl, verdict)

    def take(self, prompt: Prompt, text: str) -> Verdict | None:
        """The stored verdict of ``text`` as the answer to ``prompt`` (removed), or None."""
        with self._lock:
            found = self._entries.pop((prompt_key(prompt), text.strip()), None)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class LatentHostModel:
    """NeMo's main LLM on a latent guard's host (implements ``nemoguardrails.types.LLMModel``).

    Args:
        guard: the guard whose host answers (a :class:`LatentGuard`), or an artifact spec (``"default"`` or a
            folder) loaded on the host ``model`` — shared with a rail that names the same guard and host.
        model: the host when ``guard`` is a spec: ``"default"``, an HF id, a local folder or a ``.gguf`` file.
        options: :class:`HostModelOptions` fields (``max_new_tokens``, ``temperature``, ``seed``, ``guarded``,
            ``threshold``, ``refusal``).

    Raises:
        NemoConfigError: unknown or invalid options, or a guard that cannot be loaded.
    """

    def __init__(self, guard: LatentGuard | str | None = None, *, model: str | None = None, **options: Any) -> None:
        if isinstance(guard, str):
            options["guard"] = guard
        try:
            self.options = HostModelOptions.model_validate(options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                                 for error in exc.errors())
            raise NemoConfigError(f"{PROVIDER_NAME} model parameters are invalid: {problems} "
                                  f"(valid: {', '.join(HostModelOptions.model_fields)})") from None
        if isinstance(guard, LatentGuard):
            base = guard
        elif guard is None or isinstance(guard, str):
            base = shared_guard(resolve_guard_path(self.options.guard), model)
        else:
            raise NemoConfigError(f"LatentHostModel needs a LatentGuard or a guard spec, got {type(guard).__name__}")
        self.base_guard = base
        self.guard = base if self.options.threshold is None else base.with_settings(threshold=self.options.threshold)
        if self.options.check_output and base.response is None:
            raise NemoConfigError(f"{PROVIDER_NAME} parameters: check_output: true needs a guard with a response part "
                                  "(add one with `latent-guardrail add-response GUARD_DIR`)")
        self.prepared = PreparedAnswers()
        self.output_verdicts = OutputVerdicts()

    # ------------------------------------------------------------------ LLMModel protocol
    @property
    def model_name(self) -> str:
        """The host's name."""
        return self.guard.host.name

    @property
    def provider_name(self) -> str:
        """``latent_guardrail``."""
        return PROVIDER_NAME

    @property
    def provider_url(self) -> str | None:
        """None: the model runs in this process."""
        return None

    async def generate_async(self, prompt: str | list[ChatMessage], *, stop: list[str] | None = None,
                             **kwargs: Any) -> LLMResponse:
        """Answer ``prompt`` (a prepared answer from the passthrough rail's prefill when there is one)."""
        guard_prompt = prompt_from_nemo(prompt)
        options = self.call_options(stop, kwargs)
        prepared = self.prepared.take(guard_prompt, options)
        if prepared is not None:
            self.output_verdicts.put(guard_prompt, prepared.text, prepared.output_verdict)
            return self._response(_Answer.of(prepared), shared=True)
        # cancelled while the thread still decodes: call_in_thread sets cancel, decoding stops at the next token
        result = await call_in_thread(lambda cancel: self._generate(guard_prompt, options, cancel))
        self.output_verdicts.put(guard_prompt, result.text, result.output_verdict)
        return self._response(result, shared=False)

    async def stream_async(self, prompt: str | list[ChatMessage], *, stop: list[str] | None = None,
                           **kwargs: Any) -> AsyncIterator[LLMResponseChunk]:
        """Stream the answer token by token; the last chunk carries the finish reason, usage and verdict."""
        guard_prompt = prompt_from_nemo(prompt)
        options = self.call_options(stop, kwargs)
        prepared = self.prepared.take(guard_prompt, options)
        if prepared is not None:
            self.output_verdicts.put(guard_prompt, prepared.text, prepared.output_verdict)
            yield LLMResponseChunk(delta_content=prepared.text, model=self.model_name)
            yield self._last_chunk(_Answer.of(prepared), shared=True)
            return
        if not self.options.guarded:
            result = await call_in_thread(lambda cancel: self._plain(guard_prompt, options, cancel))
            yield LLMResponseChunk(delta_content=result.text, model=self.model_name)
            yield self._last_chunk(result, shared=False)
            return
        def chunks(cancel: threading.Event) -> Iterator[LLMResponseChunk]:
            # the whole generation runs in iterate_in_thread's worker: the host lock is taken and released there
            events = guarded_stream(self.guard, guard_prompt, on_block="refuse", refusal=self.options.refusal,
                                    cancel=cancel, **self._generate_kwargs(options))
            with closing(events):
                for event in events:
                    if isinstance(event, GuardedChunk) and event.text:
                        yield LLMResponseChunk(delta_content=event.text, model=self.model_name)
                    elif isinstance(event, GuardedResult):
                        self.output_verdicts.put(guard_prompt, event.text, event.output_verdict)
                        yield self._last_chunk(_Answer.of(event), shared=False)

        async for chunk in iterate_in_thread(chunks):
            yield chunk

    # ------------------------------------------------------------------ used by the passthrough rail
    def call_options(self, stop: Sequence[str] | None, kwargs: Mapping[str, Any]) -> CallOptions:
        """This model's options with a call's overrides (``max_tokens``/``max_new_tokens``, ``temperature``,
        ``seed``, ``stop``); sampling knobs it does not implement are ignored with a debug log.

        Raises:
            InputError: an unknown option or a bad value.
        """
        unknown = sorted(set(kwargs) - {"max_tokens", "max_new_tokens", "temperature", "seed", "stop"}
                         - _IGNORED_CALL_OPTIONS)
        if unknown:
            raise InputError(f"{PROVIDER_NAME} does not take {', '.join(unknown)}; per-call options are "
                             "max_tokens (or max_new_tokens), temperature, seed and stop")
        ignored = sorted(set(kwargs) & _IGNORED_CALL_OPTIONS)
        if ignored:
            logger.debug("%s ignores %s", PROVIDER_NAME, ", ".join(ignored))
        max_new_tokens = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        temperature = kwargs.get("temperature")
        seed = kwargs.get("seed")
        return call_options(self.options.max_new_tokens if max_new_tokens is None else max_new_tokens,
                            self.options.temperature if temperature is None else temperature,
                            self.options.seed if seed is None else seed,
                            kwargs.get("stop") if stop is None else stop, max_tokens_name="max_tokens")

    def shares_host_with(self, guard: LatentGuard) -> bool:
        """Whether this model answers on ``guard``'s host (same model object): the rail can share its prefill."""
        return self.guard.host is guard.host

    # ------------------------------------------------------------------ generation
    def _generate_kwargs(self, options: CallOptions) -> dict[str, Any]:
        return {"max_new_tokens": options.max_new_tokens, "temperature": float(options.temperature),
                "seed": options.seed, "stop": list(options.stop) or None, "check_output": self.options.check_output}

    def _generate(self, prompt: Prompt, options: CallOptions, cancel: threading.Event) -> _Answer:
        if not self.options.guarded:
            return self._plain(prompt, options, cancel)
        events = guarded_stream(self.guard, prompt, on_block="refuse", refusal=self.options.refusal, cancel=cancel,
                                **self._generate_kwargs(options))
        return _Answer.of(drain(events, GuardedResult, "guarded generation"))

    def _plain(self, prompt: Prompt, options: CallOptions, cancel: threading.Event | None = None) -> _Answer:
        """Unguarded generation (``guarded: false``): a plain prefill and the shared decoding loop; no verdict."""
        host = self.guard.host
        encoding = self.guard.encode(prompt)
        with host.lock:
            decoded = generate(host.model, host.tokenizer, encoding.input_ids, options,
                               max_positions=host.max_positions, cancel=cancel)
        return _Answer(text=decoded.text, usage=Usage(len(encoding.input_ids), len(decoded.tokens)),
                       finish_reason=decoded.finish_reason, blocked=False, verdict=None)

    # ------------------------------------------------------------------ NeMo types
    def _metadata(self, result: _Answer, shared: bool) -> dict[str, Any]:
        verdict = None if result.verdict is None else result.verdict.model_dump(mode="json")
        metadata = {METADATA_KEY: verdict, "blocked": result.blocked,
                    "shared_prefill": shared, "finish_reason": result.finish_reason}
        if result.output_verdict is not None:
            metadata[OUTPUT_METADATA_KEY] = result.output_verdict.model_dump(mode="json")
        return metadata

    def _usage(self, usage: Usage) -> UsageInfo:
        return UsageInfo(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         total_tokens=usage.total_tokens)

    def _response(self, result: _Answer, *, shared: bool) -> LLMResponse:
        return LLMResponse(content=result.text, model=self.model_name,
                           finish_reason=_FINISH[result.finish_reason],
                           usage=self._usage(result.usage), provider_metadata=self._metadata(result, shared))

    def _last_chunk(self, result: _Answer, *, shared: bool) -> LLMResponseChunk:
        return LLMResponseChunk(delta_content="", model=self.model_name,
                                finish_reason=_FINISH[result.finish_reason],
                                usage=self._usage(result.usage), provider_metadata=self._metadata(result, shared))

    def __repr__(self) -> str:
        return f"LatentHostModel(host={self.model_name!r}, guarded={self.options.guarded})"


def register_provider() -> None:
    """Register :class:`LatentHostModel` as NeMo's ``latent_guardrail`` engine (idempotent).

    NeMo keeps providers per LLM framework; this registers with the ``default`` framework (the one NeMo 0.24
    uses unless ``NEMOGUARDRAILS_LLM_FRAMEWORK`` says otherwise).
    """
    from nemoguardrails.llm.frameworks import get_framework

    framework = get_framework("default")
    if PROVIDER_NAME not in framework.get_provider_names():
        framework.register_provider(PROVIDER_NAME, LatentHostModel)
