"""The rail's per-app state and its registration: :class:`LatentGuardRail`, :func:`register`, :func:`rail_path`.

:meth:`LatentGuardRail.check_input` is what the ``latent_guard_check_input`` action runs;
:meth:`LatentGuardRail.check_output` is what ``latent_guard_check_output`` (the flow ``latent guard check output``)
runs: the bot's answer judged by the guard's response scorer. With the ``latent_guardrail`` main LLM on the
guard's host and ``check_output: true`` in its parameters, the answer was already judged while it was generated
(from the decoding steps' own states) and the rail takes that verdict; otherwise it runs one forward pass over the
prompt and the answer. It judges the user's
message (in Colang 1.0, the conversation as the main LLM will see it) and translates the verdict into NeMo's
``RailOutcome``: ``block`` or ``allow``, with the score, threshold, category and layers in ``metadata``.

With ``passthrough: true`` and a :class:`~latent_guardrail.integrations.nemo.provider.LatentHostModel` main LLM
on the guard's host (``mode: auto`` or ``shared``), the check is a guarded generation: the prefill that reads the
verdict also answers an allowed prompt, and the answer waits in the model's :class:`PreparedAnswers` for the
main-LLM call of the same request — one prefill per request. A blocked prompt stops its prefill at the last layer
the guard reads. Torch work runs in worker threads, never on the event loop: a plain check in the rail's
:class:`~latent_guardrail.microbatch.MicroBatcher` (the checks of concurrent requests share one ``check_batch``:
``batch_window_ms``, ``max_batch``), a guarded generation or a steered refusal in
:func:`~latent_guardrail.streaming.call_in_thread` (a cancelled request stops decoding). Every failure verdict
comes from the guard (:meth:`~latent_guardrail.LatentGuard.failure_verdict`: logged with its reason code,
``on_error`` applied).

Imports go one way: this module imports the action (:mod:`.actions`) and the settings (:mod:`.loading`); the
rail folder's ``config.py`` imports this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nemoguardrails.actions.rail_outcome import RailOutcome
from nemoguardrails.context import generation_options_var, raw_llm_request

from latent_guardrail.errors import InputError, LatentGuardError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import GuardedResult, OnBlock, guarded_generate, steered_refusal
from latent_guardrail.integrations.nemo.actions import (
    ACTION_NAME,
    OUTPUT_ACTION_NAME,
    RAIL_PARAM,
    bind_output_action,
    latent_guard_check_input,
    latent_guard_check_output,
)
from latent_guardrail.integrations.nemo.loading import (
    LatentGuardRailSettings,
    NemoConfigError,
    resolve_guard_path,
    shared_guard,
)
from latent_guardrail.integrations.nemo.provider import (
    PROVIDER_NAME,
    LatentHostModel,
    prompt_from_nemo,
    register_provider,
)
from latent_guardrail.microbatch import MicroBatcher
from latent_guardrail.positions import Prompt
from latent_guardrail.steering import Direction
from latent_guardrail.streaming import call_in_thread
from latent_guardrail.verdict import Verdict

__all__ = ["ACTION_NAME", "FLOW_NAME", "OUTPUT_ACTION_NAME", "OUTPUT_FLOW_NAME", "RAIL_PARAM", "LatentGuardRail",
           "rail_path", "register", "rail_outcome"]

logger = logging.getLogger(__name__)

FLOW_NAME = "latent guard check input"
"""The input-rail flow that runs the action (``flows.co``, ``flows.v1.co``)."""
OUTPUT_FLOW_NAME = "latent guard check output"
"""The output-rail flow (``flows.co``, ``flows.v1.co``); it needs a guard with a response part."""


def rail_path() -> str:
    """The rail folder (``flows.co``, ``flows.v1.co``, ``actions.py``, ``config.py``) for ``import_paths``."""
    return str(Path(__file__).resolve().parent)


def rail_outcome(verdict: Verdict, *, shared_prefill: bool = False, refusal: str | None = None) -> RailOutcome:
    """The verdict as NeMo's ``RailOutcome``: ``block`` when harmful, else ``allow``.

    ``metadata``: ``score``, ``threshold``, ``category``, ``decided_by`` (the rule that decided), ``monitored``,
    ``layers``, ``layer_scores``, ``category_scores``,
    ``status``/``error`` (the failure policy decided), ``truncated``, ``sanitized``, ``mode``, ``fingerprint``,
    ``weight_drift`` (the host is the guard's model with other weights),
    ``shared_prefill`` (the main LLM's answer came from this check's prefill) and ``refusal`` (the host's own
    steered refusal with ``on_block: steer``, else None).
    """
    data = verdict.model_dump(mode="json")
    metadata = {key: data[key] for key in ("score", "threshold", "category", "decided_by", "monitored", "layers",
                                           "layer_scores", "category_scores", "status", "error", "truncated",
                                           "sanitized", "mode", "fingerprint", "weight_drift", "target")}
    metadata.update(shared_prefill=shared_prefill, refusal=refusal if verdict.harmful else None)
    if verdict.harmful:
        return RailOutcome.block(reason=f"latent guard: {verdict.summary()}", metadata=metadata)
    return RailOutcome.allow(reason=f"latent guard: {verdict.summary()}", metadata=metadata)


class LatentGuardRail:
    """The rail of one NeMo app: a guard with the settings' threshold and failure policy, and what to do on a block.

    Args:
        guard: the fitted guard (its host is the one judged — and, in shared mode, the one answering).
        settings: ``custom_data.latent_guard``.

    Raises:
        NemoConfigError: ``on_block: steer`` with a guard that cannot steer (no refusal direction).
    """

    def __init__(self, guard: LatentGuard, settings: LatentGuardRailSettings | None = None) -> None:
        if not isinstance(guard, LatentGuard):
            raise NemoConfigError(f"the latent guard rail needs a LatentGuard, got {type(guard).__name__}")
        self.settings = settings if settings is not None else LatentGuardRailSettings()
        self.base_guard = guard  # keeps the shared guard alive (the shared table holds weak references)
        changes: dict[str, Any] = {"on_error": self.settings.on_error}
        if self.settings.allow_weight_drift:
            changes["allow_weight_drift"] = True
        if self.settings.threshold is not None:
            changes["threshold"] = self.settings.threshold
        if self.settings.response_threshold is not None:
            changes["response_threshold"] = self.settings.response_threshold
        if self.settings.category_policy or self.settings.category_thresholds:
            # on top of the guard's own (an extended guard carries its new categories' thresholds)
            changes["category_policy"] = {**guard.settings.category_policy, **self.settings.category_policy}
            changes["category_thresholds"] = {**guard.settings.category_thresholds,
                                              **self.settings.category_thresholds}
        try:
            self.guard = guard.with_settings(**changes)
        except (InputError, ValueError) as exc:
            raise NemoConfigError(f"custom_data.latent_guard: {exc}") from exc
        if self.settings.on_block == "steer":
            _check_steering(self.guard)
        self.batcher = MicroBatcher(self.guard, window_ms=self.settings.batch_window_ms,
                                    max_batch=self.settings.max_batch)

    async def check_input(self, text: Any, *, config: Any = None, llm: Any = None) -> RailOutcome:
        """Judge the user's message ``text`` (see the module docstring); never raises.

        An empty or whitespace-only message blocks (nothing to judge, nothing to answer); an internal failure
        blocks or allows as ``on_error`` says, with ``status="error"`` in the metadata, and is never cached.
        """
        try:
            if not isinstance(text, str):
                raise InputError(f"the user message must be a str, got {type(text).__name__}")
            if not text.strip():
                return _empty_outcome(self.guard)
            prompt = self._prompt(text, config)
            sharing = self._sharing_model(config, llm)
            if sharing is not None:
                return await self._shared(prompt, sharing)
            return await self._check(prompt)
        except Exception as exc:  # the failure policy decides; the guard logs the failure with its reason code
            logger.debug("latent guard rail failed", exc_info=True)
            return rail_outcome(self.guard.failure_verdict(exc))  # on_error is block or allow here: never raises

    async def check_output(self, text: Any, user_text: Any, *, config: Any = None, llm: Any = None) -> RailOutcome:
        """Judge the bot's answer ``text`` to the user's message ``user_text``; never raises.

        The verdict the latent main LLM's output check computed for this very answer is reused (no pass); else one
        forward pass over the prompt and the answer (:meth:`LatentGuard.check_response`, in a worker thread). An
        empty answer passes (nothing was said); an internal failure blocks or allows as ``on_error`` says.
        """
        try:
            if not isinstance(text, str):
                raise InputError(f"the bot message must be a str, got {type(text).__name__}")
            if not isinstance(user_text, str) or not user_text.strip():
                raise InputError("the output rail needs the user's message the answer replies to")
            if not text.strip():
                return RailOutcome.allow(reason="latent guard: empty answer", metadata={"target": "response"})
            prompt = self._prompt(user_text, config)
            if isinstance(llm, LatentHostModel) and llm.shares_host_with(self.guard):
                stored = llm.output_verdicts.take(prompt, text)
                if stored is not None:
                    return rail_outcome(self._rethreshold(stored), shared_prefill=True)
            verdict = await call_in_thread(lambda _cancel: self.guard.check_response(prompt, text))
            return rail_outcome(verdict)
        except Exception as exc:  # the failure policy decides; the guard logs the failure with its reason code
            logger.debug("latent guard output rail failed", exc_info=True)
            return rail_outcome(self.guard.response_failure(exc))

    def _rethreshold(self, verdict: Verdict) -> Verdict:
        """A stored response verdict decided again at this rail's response threshold."""
        threshold = self.guard.response_threshold
        return verdict.model_copy(update={"threshold": threshold, "harmful": verdict.score >= threshold})

    def close(self) -> None:
        """Stop the batcher's worker thread after the checks already queued (idempotent; it also stops on its own
        when idle, and a later check starts it again)."""
        self.batcher.close()

    # ------------------------------------------------------------------ internals
    def _prompt(self, text: str, config: Any) -> Prompt:
        """What the main LLM will see: in Colang 1.0 the request's messages (last user turn = ``text``)."""
        if getattr(config, "colang_version", "1.0") != "1.0":
            return text  # Colang 2.x passthrough hands the model $user_message only
        raw = raw_llm_request.get()
        if not isinstance(raw, list) or not raw:
            return text
        messages = [dict(message) for message in raw if isinstance(message, Mapping)]
        if len(messages) != len(raw) or messages[-1].get("role") != "user":
            return text
        messages[-1]["content"] = text
        try:
            return prompt_from_nemo(messages)
        except (InputError, ValueError):
            return text

    def _sharing_model(self, config: Any, llm: Any) -> LatentHostModel | None:
        """The main LLM when this check can also produce its answer (same host, passthrough), else None."""
        if self.settings.mode == "check":
            return None
        if bool(getattr(config, "passthrough", False)) and isinstance(llm, LatentHostModel) \
                and llm.shares_host_with(self.guard) and llm.options.guarded:
            return llm
        if self.settings.mode == "shared":
            logger.warning("latent guard mode 'shared' cannot share the prefill here (needs passthrough: true and "
                           "the %s main LLM on the guard's host, guarded); checking separately", PROVIDER_NAME)
        return None

    async def _check(self, prompt: Prompt) -> RailOutcome:
        verdict = await self.batcher.acheck(prompt)
        refusal = None
        if verdict.harmful and verdict.status == "ok" and self.settings.on_block == "steer":
            refusal = await self._steered(prompt)
        return rail_outcome(verdict, refusal=refusal)

    async def _steered(self, prompt: Prompt) -> str | None:
        try:
            result = await call_in_thread(lambda _cancel: steered_refusal(
                self.guard, prompt, max_new_tokens=self.settings.steer_max_new_tokens))
        except LatentGuardError as exc:  # the block stands; the flow falls back to its canned refusal
            logger.error("steered refusal failed (%s); answering with the flow's refusal", exc)
            return None
        return str(result.text).strip() or None

    async def _shared(self, prompt: Prompt, llm: LatentHostModel) -> RailOutcome:
        options = generation_options_var.get()
        llm_params = dict((options.llm_params if options is not None else None) or {})
        call = llm.call_options(None, llm_params)
        on_block: OnBlock = "steer" if self.settings.on_block == "steer" else "refuse"
        try:
            result: GuardedResult = await call_in_thread(lambda cancel: guarded_generate(
                self.guard, prompt, max_new_tokens=call.max_new_tokens, temperature=float(call.temperature),
                seed=call.seed, stop=list(call.stop) or None, on_block=on_block, cancel=cancel,
                check_output=llm.options.check_output))
        except LatentGuardError as exc:  # e.g. the prefill failed and the policy allowed: judge on its own
            logger.warning("shared prefill failed (%s); checking separately", exc)
            return await self._check(prompt)
        answered = not result.blocked or result.finish_reason == "blocked_output"  # the prompt itself passed
        if answered:
            llm.prepared.put(prompt, call, result)
        blocked = result.finish_reason == "blocked"
        refusal = str(result.text).strip() or None if blocked and on_block == "steer" else None
        return rail_outcome(result.verdict, shared_prefill=answered, refusal=refusal)


def _empty_outcome(guard: LatentGuard) -> RailOutcome:
    """An empty message blocks whatever ``on_error`` says: there is nothing to judge and nothing to answer."""
    reason = "empty_message"
    logger.warning("latent guard rail blocked an empty message (%s)", reason, extra={"reason": reason})
    threshold = guard.threshold if math.isfinite(guard.threshold) else 0.0
    return rail_outcome(Verdict.from_failure(reason, block=True, mode=guard.mode, threshold=threshold,
                                             fingerprint=guard.fingerprint, weight_drift=guard.weight_drift))


def _check_steering(guard: LatentGuard) -> None:
    """Fail at configuration time when ``on_block: steer`` cannot work with this guard."""
    try:
        Direction.from_guard(guard, "refusal")
    except (LatentGuardError, ValueError, KeyError) as exc:
        raise NemoConfigError(f"custom_data.latent_guard.on_block: steer: this guard cannot steer ({exc}); "
                              "recalibrate it (calibration fits the refusal direction) or use on_block: refuse") \
            from exc


def _config_base(config: Any) -> str | None:
    paths = [path.strip() for path in str(getattr(config, "config_path", None) or "").split(",") if path.strip()]
    return paths[0] if paths else None


def _check_mode(config: Any, settings: LatentGuardRailSettings, llm: Any) -> None:
    if settings.mode != "shared":
        return
    main = [model for model in getattr(config, "models", []) if getattr(model, "type", None) == "main"]
    latent_main = isinstance(llm, LatentHostModel) or any(getattr(model, "engine", None) == PROVIDER_NAME
                                                          for model in main)
    if not getattr(config, "passthrough", False) or not latent_main:
        raise NemoConfigError(f"custom_data.latent_guard.mode: shared needs `passthrough: true` and a main model "
                              f"with `engine: {PROVIDER_NAME}` on the guard's host; use mode: auto or check")


def register(app: Any, guard: LatentGuard | None = None) -> LatentGuardRail | None:
    """Install the latent guard rail on a NeMo ``LLMRails`` app.

    Reads and validates ``custom_data.latent_guard``, loads its guard unless ``guard`` is given (a guard built in
    code: calibrated, or on another host), registers the ``latent_guard_check_input`` action with the app's
    rail as its parameter and the ``latent_guard_check_output`` action bound to the rail (NeMo's streamed output
    rails pass no registered parameters), and registers the ``latent_guardrail`` LLM provider. The flows come from
    :func:`rail_path` in ``import_paths`` (or a config folder that copies them). Called by the rail folder's
    ``config.py`` while ``LLMRails`` is being created; call it again in code to swap in your own guard.
    Returns the rail (None when ``guard: null`` and no guard is given: register one in code before the first
    request, or the rail blocks with ``error="not_registered"``).

    Raises:
        NemoConfigError: invalid settings, a missing or unfit artifact, ``on_block: steer`` without a refusal
            direction, ``mode: shared`` without passthrough and the latent main LLM.
    """
    config = app.config
    settings = LatentGuardRailSettings.from_custom_data(getattr(config, "custom_data", None))
    _check_mode(config, settings, getattr(app, "llm", None))
    register_provider()
    app.register_action(latent_guard_check_input, name=ACTION_NAME)
    app.register_action(latent_guard_check_output, name=OUTPUT_ACTION_NAME)
    if guard is None:
        if settings.guard is None:
            return None
        guard = shared_guard(resolve_guard_path(settings.guard, _config_base(config)), settings.host,
                             allow_weight_drift=settings.allow_weight_drift)
    if _uses_output_flow(config) and guard.response is None:
        raise NemoConfigError(f"the flow '{OUTPUT_FLOW_NAME}' needs a guard with a response part; add one with "
                              "`latent-guardrail add-response GUARD_DIR` or use the default guard")
    rail = LatentGuardRail(guard, settings)
    app.register_action_param(RAIL_PARAM, rail)
    # streamed output rails call the action without the registered parameters: this copy carries the rail
    app.register_action(bind_output_action(rail), name=OUTPUT_ACTION_NAME)
    return rail


def _uses_output_flow(config: Any) -> bool:
    """Whether the config's output rails run ``latent guard check output`` (Colang 1.0 ``rails.output.flows``; a
    Colang 2.x config names it in its own ``output rails`` flow, checked when the flow runs)."""
    output = getattr(getattr(config, "rails", None), "output", None)
    return OUTPUT_FLOW_NAME in list(getattr(output, "flows", None) or [])

