"""``LatentGuard``: check prompts with the host's own hidden states.

Typical use::

    guard = LatentGuard.load("default")            # the default host, fitted on the bundled sets
    verdict = guard.check("How do I pick a lock?")
    verdict.harmful, verdict.score, verdict.threshold, verdict.layer_scores

A check renders the prompt with the host's chat template, runs one forward pass that stops after the
last layer the scorer reads (early exit), and scores the t_inst states in float64.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .activations import extract_states
from .answers import AnswerEncoding, encode_answer, read_answer_states
from .artifact import check_fingerprint, load_fitted, save_fitted
from .calibration import calibrate
from .datasets import PromptRecord, read_calibration_sets
from .errors import ArtifactError, InputError, LayerError, NumericalError
from .extend import DEFAULT_CATEGORY_FPR, Extension, extend_fitted, plan_extension
from .fingerprint import WEIGHTS_PART, legacy_weights_digest
from .fitted import FittedGuard
from .hosts import DEFAULT_MODEL, Host, cache_root, load_host
from .layers import decoder_blocks
from .normalize import close_prompt, close_sentence, normalize_prompt
from .policy import CategoryPolicy, Policy, Scores, ThresholdPolicy, failure_verdict, overflow_verdict
from .positions import Prompt, PromptEncoding, encode_prompt
from .readings import Part, Reading
from .response import ResponseScore, ResponseScorer
from .response_fit import add_response, read_response_sets
from .segments import quoted_values, sentence_groups, typed_turns, unfinished_runs
from .settings import CalibrationSettings, GuardSettings, Mode, Selection
from .state_cache import StateCache
from .verdict import Verdict, decisive_span
from .views import MAX_CLAUSE_ENDS, View

__all__ = ["LatentGuard", "DEFAULT_GUARD", "DEFAULT_RECIPE", "build_default_guard", "shipped_default_guard"]

logger = logging.getLogger(__name__)

DEFAULT_GUARD = "default"
_THRESHOLD_POLICY = ThresholdPolicy()
_DEFAULT_GUARD_VERSION = "7"  # 7: letter extra family; 6: xcontrast sets, split-turn first parts unlabelled
DEFAULT_RECIPE = CalibrationSettings(mode="pooled", augment=1, target_fpr=0.15)
"""How the default guard is fitted on the bundled sets (threshold at 15 % held-out-family false positives)."""
DEFAULT_GUARD_SETTINGS = GuardSettings(case_fold=True, close_sentences=True)
"""The default guard's check settings: normalised, case-folded text (mixed case reads like lower case) whose last
sentence is closed (a missing final stop reads like a present one)."""


def _as_host(host: Host | str | os.PathLike[str] | None) -> Host:
    if isinstance(host, Host):
        return host
    return load_host(DEFAULT_MODEL if host is None else host)


class LatentGuard:
    """A fitted latent guard bound to its host model. Thread-safe: checks may run from many threads."""

    def __init__(self, host: Host, fitted: FittedGuard, settings: GuardSettings | None = None) -> None:
        self.host = host
        self.fitted = fitted
        self.settings = settings if settings is not None else fitted.settings
        if self.settings.system_prompt != fitted.settings.system_prompt:
            raise InputError("the system prompt is part of the guard's identity; recalibrate to change it")
        actual = host.fingerprint_parts(self.settings.system_prompt)
        stored = fitted.fingerprint_parts.get(WEIGHTS_PART)
        if stored not in (None, actual[WEIGHTS_PART]) and stored == legacy_weights_digest(host.model):
            actual[WEIGHTS_PART] = stored  # an artifact written before `weights` covered every tensor: its own host
        self.weight_drift = check_fingerprint(fitted, actual, allow_weight_drift=self.settings.allow_weight_drift)
        """True when the host is the guard's model with other weights (accepted by ``allow_weight_drift``)."""
        try:
            blocks = len(decoder_blocks(host.model, fitted.layer_template))
        except LayerError as exc:
            raise ArtifactError(f"the guard's layer_template {fitted.layer_template!r} does not fit the host: {exc}") \
                from exc
        if blocks != fitted.num_blocks:
            raise ArtifactError(f"the guard was fitted for {fitted.num_blocks} decoder blocks at "
                                f"{fitted.layer_template!r}; the host has {blocks} there")
        named = set(self.settings.category_policy) | set(self.settings.category_thresholds)
        unknown = sorted(named - set(self.categories))
        if unknown:
            raise InputError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} in the category policy: "
                             f"{', '.join(unknown)}; this guard has: {', '.join(self.categories) or 'none'}")
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def calibrate(
        cls,
        host: Host | str | os.PathLike[str] | None = None,
        harmful: Sequence[str | PromptRecord | Prompt] = (),
        harmless: Sequence[str | PromptRecord | Prompt] = (),
        *,
        categories: Mapping[str, Sequence[str | PromptRecord | Prompt]] | None = None,
        mode: Mode = "tuned",
        selection: Selection = "label",
        system_prompt: str | None = None,
        progress: bool = True,
        settings: CalibrationSettings | None = None,
        guard_settings: GuardSettings | None = None,
    ) -> LatentGuard:
        """Fit a guard for ``host`` (``"default"``, an HF id/path, or a :class:`Host`).

        ``mode``/``selection`` are shortcuts for the same fields of ``settings``; ``system_prompt`` for
        ``guard_settings.system_prompt``.
        """
        loaded = _as_host(host)
        cal = (settings or CalibrationSettings()).model_copy(update={"mode": mode, "selection": selection})
        cal = CalibrationSettings.model_validate(cal.model_dump())
        base = guard_settings or GuardSettings()
        if system_prompt is not None:
            base = GuardSettings.model_validate({**base.model_dump(), "system_prompt": system_prompt})
        fitted = calibrate(loaded, harmful, harmless, categories=categories, settings=cal, guard_settings=base,
                           progress=progress)
        return cls(loaded, fitted)

    @classmethod
    def load(cls, path: str | os.PathLike[str] = DEFAULT_GUARD, host: Host | str | os.PathLike[str] | None = None,
             *, settings: GuardSettings | None = None, progress: bool = True,
             allow_weight_drift: bool | None = None) -> LatentGuard:
        """Load a saved guard onto ``host`` (the default host when None).

        ``allow_weight_drift=True`` (or ``settings.allow_weight_drift``) accepts a host that is the guard's model
        with other weights — a fine-tune, a PEFT/LoRA model merged or not: its verdicts carry
        ``weight_drift=True``. Without it such a host is refused (:class:`~latent_guardrail.errors.WeightDriftError`);
        another model is refused either way.

        ``"default"`` is the guard fitted on the bundled ``calibration/`` sets with :data:`DEFAULT_RECIPE`
        (the pooled rule, one wrapped copy of every prompt). For the default host it ships inside the package
        (``latent_guardrail/default_guard``, rebuilt bit for bit by ``latent-guardrail build-default``); for
        any other host it is fitted on first use (minutes: every clause end of every prompt is read) and cached.

        Raises:
            ArtifactError: missing or corrupt artifact.
            FingerprintMismatchError: the artifact was fitted for another host.
            WeightDriftError: the host is the guard's model with other weights and drift was not allowed.
        """
        loaded = _as_host(host)
        if allow_weight_drift is not None:
            settings = GuardSettings.model_validate({**(settings.model_dump(exclude_unset=True) if settings else {}),
                                                     "allow_weight_drift": allow_weight_drift})
        if str(path) == DEFAULT_GUARD:
            path = _default_guard_for(loaded, progress)
        fitted = load_fitted(path)
        return cls(loaded, fitted, _merge(fitted.settings, settings))

    def extend(self, categories: Mapping[str, Sequence[str | PromptRecord | Prompt]] | None = None, *,
               harmless: Sequence[str | PromptRecord | Prompt] = (), remove: Sequence[str] = (),
               base: tuple[Sequence[PromptRecord], Sequence[PromptRecord]] | None = None, every: int | None = None,
               recipe: CalibrationSettings | None = None, category_fpr: float = DEFAULT_CATEGORY_FPR,
               cache: StateCache | bool = True, progress: bool = True) -> LatentGuard:
        """A guard refitted with new categories (harmful or topical) on top of this one's calibration data, and
        without the ``remove`` d ones (:mod:`latent_guardrail.extend`).

        Only the new prompts are read: the base prompts' clause-end states come from the state cache
        (``cache``: True = :class:`~latent_guardrail.state_cache.StateCache` under ``cache_root()``, a cache of
        your own, or False to read everything). A new category gets its own threshold (it blocks on its own
        score, flagging ``category_fpr`` of held-out harmless items). ``base``: the rows this guard was fitted on,
        when they are not the bundled sets (``every``: every k-th bundled row, as ``build_default_guard``);
        ``recipe``: how they were fitted (default :data:`DEFAULT_RECIPE` for the bundled sets).

        Raises:
            InputError: not a pooled guard, an unknown category to remove, too few new prompts.
        """
        default_rows = read_calibration_sets() if base is None else None
        chosen = recipe if recipe is not None else (DEFAULT_RECIPE if base is None
                                                     else CalibrationSettings(mode="pooled"))
        items, added, extension = plan_extension(self.fitted, categories, harmless=harmless, remove=remove,
                                                 base=base, default_rows=default_rows, every=every, recipe=chosen)
        if base is None and Extension.from_report(self.fitted.report) is None:
            plain = sum(item.group.startswith("src:") for item in items) - sum(
                len(v) for v in extension.added.values()) - len(extension.harmless)
            removed = sum(1 for row in (default_rows or ([], []))[0][::extension.every]
                          if row.category in extension.removed)
            fitted_on = self.fitted.report.get("items", {}).get("plain")
            if fitted_on is not None and fitted_on != plain + removed:
                warnings.warn(f"this guard was fitted on {fitted_on} prompts, the bundled base has {plain + removed}: "
                              "the extension refits on the bundled sets (pass base= for a guard of your own)",
                              stacklevel=2)
        store = StateCache() if cache is True else (None if cache is False else cache)
        fitted = extend_fitted(self.host, self.fitted, items, added=added, extension=extension, recipe=chosen,
                               category_fpr=category_fpr, cache=store, progress=progress)
        return LatentGuard(self.host, fitted)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the guard as ``guard.json`` + ``tensors.safetensors`` (atomically)."""
        return save_fitted(self.fitted, folder)

    def with_settings(self, **changes: Any) -> LatentGuard:
        """A guard sharing host and fit with some settings changed (e.g. ``threshold=1.5``)."""
        merged = GuardSettings.model_validate({**self.settings.model_dump(), **changes})
        return LatentGuard(self.host, self.fitted, merged)

    def with_refusal_direction(self, vectors: torch.Tensor, source: str) -> LatentGuard:
        """A guard whose refusal direction is ``vectors`` ``(num_blocks + 1, d)`` (saved with it by :meth:`save`).

        Use it to store a direction fitted with :func:`latent_guardrail.steering.fit_refusal_direction`.
        """
        blocks = self.num_blocks
        hidden = self.fitted.centroids.harmful.shape[-1]
        if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape) != (blocks + 1, hidden):
            raise InputError(f"a refusal direction needs shape ({blocks + 1}, {hidden}), got "
                             f"{tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__}")
        if not bool(torch.isfinite(vectors).all()):
            raise NumericalError("the refusal direction has NaN or inf entries")
        fitted = dataclasses.replace(self.fitted, refusal_direction=vectors.detach().to("cpu", torch.float32),
                                     refusal_source=source)
        return LatentGuard(self.host, fitted, self.settings)

    # ------------------------------------------------------------------ properties
    @property
    def mode(self) -> str:
        """Scoring mode: 'paper' or 'tuned'."""
        return self.fitted.scorer.mode

    @property
    def policy(self) -> Policy:
        """The decision rule applied to the scores: the single threshold, or :class:`CategoryPolicy` when the
        settings name category actions or thresholds (checked against the guard's categories on construction)."""
        if not (self.settings.category_policy or self.settings.category_thresholds):
            return _THRESHOLD_POLICY
        return CategoryPolicy(dict(self.settings.category_policy), dict(self.settings.category_thresholds))

    @property
    def threshold(self) -> float:
        """The score at or above which a prompt is harmful."""
        if self.settings.threshold is not None:
            return float(self.settings.threshold)
        return float(self.fitted.scorer.threshold)

    @property
    def num_blocks(self) -> int:
        """Decoder blocks of the host (the artifact's count, checked against the host when the guard is built)."""
        return self.fitted.num_blocks

    @property
    def layers(self) -> tuple[int, ...]:
        """Residual layers the scorer reads (early exit stops after the last one)."""
        return self.fitted.scorer.layers

    @property
    def fingerprint(self) -> str:
        """Identity of the host this guard was fitted for."""
        return self.fitted.fingerprint

    @property
    def categories(self) -> tuple[str, ...]:
        """Risk categories with their own scores."""
        return self.fitted.scorer.categories

    # ------------------------------------------------------------------ checking
    def encode(self, prompt: Prompt, *, normalize: bool | None = None, case_fold: bool | None = None,
               close: bool | None = None) -> PromptEncoding:
        """Validate, template and tokenize ``prompt`` (no model work).

        With ``normalize`` (default: ``settings.normalize``) every user message is normalised first
        (:func:`latent_guardrail.normalize.normalize_text`, case-folded when ``case_fold``, default
        ``settings.case_fold``, its last sentence closed when ``close``, default ``settings.close_sentences``);
        ``encoding.normalized`` says whether that changed it.
        """
        judged, changed = self._judged(prompt, normalize, case_fold, close)
        return self._encode_judged(judged, changed)

    def _judged(self, prompt: Prompt, normalize: bool | None = None, case_fold: bool | None = None,
                close: bool | None = None) -> tuple[Prompt, bool]:
        """The prompt as judged (normalised when ``normalize``, default ``settings.normalize``) and whether
        normalising changed it."""
        if not (self.settings.normalize if normalize is None else normalize):
            return prompt, False
        return normalize_prompt(prompt, case_fold=self.settings.case_fold if case_fold is None else case_fold,
                                close=self.settings.close_sentences if close is None else close)

    def _encode_judged(self, judged: Prompt, changed: bool) -> PromptEncoding:
        encoding = self._encode_limited(judged)
        return encoding.model_copy(update={"normalized": True}) if changed else encoding

    def _encode_limited(self, prompt: Prompt) -> PromptEncoding:
        limit = self.settings.max_chars
        if isinstance(prompt, str) and len(prompt) > limit:
            return self._encode(prompt[-limit:]).model_copy(update={"truncated": True})
        if not isinstance(prompt, str) and isinstance(prompt, Sequence) and prompt and isinstance(prompt[-1], Mapping):
            content = prompt[-1].get("content")
            if isinstance(content, str) and len(content) > limit:
                cut = [*prompt[:-1], {**prompt[-1], "content": content[-limit:]}]
                return self._encode(cut).model_copy(update={"truncated": True})
        return self._encode(prompt)

    def _encode(self, prompt: Prompt) -> PromptEncoding:
        limit = self.settings.max_tokens or self.host.max_positions
        return encode_prompt(self.host.tokenizer, prompt, system_prompt=self.settings.system_prompt,
                             max_tokens=limit)

    @property
    def views(self) -> tuple[str, ...]:
        """What the scorer reads at each layer: ``t_inst`` and possibly ``content_mean``."""
        return self.fitted.scorer.views

    def states(self, encodings: Sequence[PromptEncoding], layers: Sequence[int] | None = None,
               views: Sequence[str | View] | None = None, progress: bool | str = False) -> torch.Tensor:
        """Residual states ``(n, len(views), len(layers), d)`` (float32) of encoded prompts.

        Defaults: the scorer's layers and views (what a check reads).
        """
        with self.host.lock:
            return extract_states(self.host.model, encodings, self.layers if layers is None else layers,
                                  pad_token_id=self.host.tokenizer.pad_token_id,
                                  views=self.views if views is None else views,
                                  batch_size=self.settings.batch_size, layer_template=self.fitted.layer_template,
                                  progress=progress)

    def verdicts_from_states(self, encodings: Sequence[PromptEncoding], states: torch.Tensor) -> list[Verdict]:
        """Verdicts from states ``(n, len(self.views), len(self.layers), d)`` of ``encodings``."""
        out = self.fitted.scorer.score(states)
        if not (torch.isfinite(out.score).all() and torch.isfinite(out.layer_scores).all()):
            raise NumericalError("scores are not finite")
        threshold = self.threshold
        verdicts = []
        for row, encoding in enumerate(encodings):
            if encoding.truncated and self.settings.on_overflow == "block":
                verdicts.append(self.overflow_verdict(encoding))
                continue
            score = float(out.score[row])
            cat_scores = {name: float(out.category_scores[row, c]) for c, name in enumerate(self.categories)}
            decision = self.policy.decide(Scores(score, threshold, cat_scores))
            if decision.monitored:
                logger.info("latent guard: monitored categories applied: %s (%s)", ", ".join(decision.monitored),
                            decision.decided_by, extra={"monitored": decision.monitored})
            slot = None if out.slot is None else int(out.slot[row])
            verdicts.append(Verdict(
                harmful=decision.harmful, score=score, threshold=threshold, mode=self.mode,
                category=decision.category, category_scores=cat_scores, decided_by=decision.decided_by,
                monitored=decision.monitored,
                layer_scores={layer: float(out.layer_scores[row, i]) for i, layer in enumerate(self.layers)},
                layers=self.layers, views=self.views, t_inst=encoding.t_inst, t_post_inst=encoding.t_post_inst,
                num_tokens=len(encoding.input_ids), truncated=encoding.truncated, sanitized=encoding.sanitized,
                normalized=encoding.normalized, span=decisive_span(encoding, slot, MAX_CLAUSE_ENDS),
                fingerprint=self.fingerprint, weight_drift=self.weight_drift,
            ))
        return verdicts

    def check(self, prompt: Prompt) -> Verdict:
        """Judge one prompt (a string or a list of chat messages).

        Raises:
            InputError: the prompt is not a string/message list, or is empty.
        """
        return self.check_batch([prompt])[0]

    def check_batch(self, prompts: Sequence[Prompt], *, progress: bool = False) -> list[Verdict]:
        """Judge many prompts with batched forward passes; verdicts come back in input order.

        Raises:
            InputError: ``prompts`` is not a list, or one of them is invalid (its index is named).
        """
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
            raise InputError(f"check_batch takes a list of prompts, got {type(prompts).__name__}; "
                             "for one prompt use check()")
        encodings, unclosed = [], []
        for index, prompt in enumerate(prompts):
            try:
                # normalised once without closing stops (what the readings cut from), then closed for the whole read
                opened, changed = self._judged(prompt, close=False)
                closed, closing = close_prompt(opened) if self.settings.normalize and self.settings.close_sentences \
                    else (opened, False)
                encodings.append(self._encode_judged(closed, changed or closing))
            except InputError as exc:
                raise InputError(f"prompt {index}: {exc}") from exc
            unclosed.append(opened)
        readings = [self.readings(prompt, normalized=True) for prompt in unclosed]
        if not any(readings):
            return self.check_encodings(encodings, progress=progress)
        extra = [reading.encoding for pieces in readings for reading in pieces]
        verdicts = self.check_encodings([*encodings, *extra], progress=progress)
        out, at = [], len(encodings)
        for verdict, pieces in zip(verdicts[:len(encodings)], readings, strict=True):
            out.append(self.worst_reading(verdict, pieces, verdicts[at:at + len(pieces)]))
            at += len(pieces)
        return out

    def readings(self, prompt: Prompt, *, normalized: bool = False) -> list[Reading]:
        """The extra readings of ``prompt``, each judged as an instruction of its own (one :class:`Reading` per
        piece: its message index into the messages as given, its start in that content, normalised, and its
        encoding).

        - **Typed turns** (``settings.typed_turns``, on by default): a user message that types a conversation
          (chat-template markers, ``User:`` / ``Assistant:`` lines; :func:`~latent_guardrail.segments.typed_turns`)
          has each typed user piece read alone, so a fake earlier turn cannot change how the request itself is
          read. Costs nothing for messages without markers.
        - **Quoted values** (``settings.quoted_values``, on by default): a text a user message carries in quotes
          or data — a JSON/YAML/CSV string, an element's content, a code fence, a markdown quote, a field line's
          value (:func:`~latent_guardrail.segments.quoted_values`) — is read alone, as the request it may be.
        - **Joined turns** (``settings.joined_turns``, on by default): user messages that break off mid-sentence
          are also read joined (by spaces) with the user messages that go on with them
          (:func:`~latent_guardrail.segments.unfinished_runs`), so a request split across turns is read whole.
          Its span is reported in the message where the decisive clause starts.
        - **Segments** (``settings.segments``, opt-in): every sentence group of every user message
          (:func:`~latent_guardrail.segments.sentence_groups`), for context that dilutes.

        The verdict is the worst reading (:meth:`worst_reading`); the message as a whole is always read too.
        Pieces are cut from the text normalised without closing stops (a turn that breaks off must still look
        unfinished), then each is closed like a whole message. ``normalized``: ``prompt`` is already normalised
        that way.
        """
        settings = self.settings
        if not (settings.typed_turns or settings.quoted_values or settings.joined_turns or settings.segments):
            return []
        if not normalized:
            prompt, _ = self._judged(prompt, close=False)
        contents = [(0, prompt)] if isinstance(prompt, str) else [
            (m, message["content"]) for m, message in enumerate(prompt)
            if isinstance(message, Mapping) and message.get("role") == "user"
            and isinstance(message.get("content"), str)]
        out: list[Reading] = []
        for message, content in contents:
            pieces = typed_turns(content) if settings.typed_turns else []
            if settings.quoted_values:
                pieces += [value for value in quoted_values(content) if value not in pieces]
            if settings.segments:
                groups = sentence_groups(content, settings.segment_chars)
                pieces += groups if len(groups) > 1 else []
            for piece in pieces:
                text = content[piece.start:piece.end]
                reading = self._reading(text, (Part(message, 0, piece.start, len(text)),))
                out += [reading] if reading is not None else []
        if settings.joined_turns:
            for run in unfinished_runs([content for _, content in contents]):
                parts: list[Part] = []
                texts: list[str] = []
                at = 0
                for k in run:
                    message, content = contents[k]
                    texts.append(content.strip())
                    parts.append(Part(message, at, len(content) - len(content.lstrip()), len(texts[-1])))
                    at += len(texts[-1]) + 1
                reading = self._reading(" ".join(texts), tuple(parts))
                out += [reading] if reading is not None else []
        return out

    def _reading(self, text: str, parts: tuple[Part, ...]) -> Reading | None:
        """``text`` read as an instruction of its own (closed like a whole message), or None when it cannot be."""
        if self.settings.normalize and self.settings.close_sentences:
            text = close_sentence(text)
        try:
            return Reading(self.encode(text, normalize=False), parts)
        except InputError:
            return None

    def worst_reading(self, verdict: Verdict, pieces: Sequence[Reading], piece_verdicts: Sequence[Verdict]) -> Verdict:
        """``verdict`` of the whole prompt, or the verdict of its highest-scoring extra reading when that one
        scores higher (``segmented=True``; its scores, and its span moved into the message's own offsets; the
        positions ``t_inst`` / ``t_post_inst`` / ``num_tokens`` stay those of the whole prompt as encoded)."""
        out = verdict
        for reading, piece in zip(pieces, piece_verdicts, strict=True):
            if piece.status != "ok" or out.status != "ok" or piece.score <= out.score:
                continue
            out = piece.model_copy(update={"segmented": True, "span": reading.span(piece.span),
                                           "normalized": verdict.normalized,
                                           "truncated": verdict.truncated, "sanitized": verdict.sanitized,
                                           "t_inst": verdict.t_inst, "t_post_inst": verdict.t_post_inst,
                                           "num_tokens": verdict.num_tokens})
        return out

    def check_encodings(self, encodings: Sequence[PromptEncoding], *, progress: bool = False) -> list[Verdict]:
        """Verdicts of prompts already encoded with :meth:`encode` (model failures follow ``on_error``)."""
        if not encodings:
            return []
        try:
            states = self.states(encodings, progress=progress)
            return self.verdicts_from_states(encodings, states)
        except Exception as exc:  # any failure of the model work: the on_error policy decides (fail closed)
            return [self.failure_verdict(exc)] * len(encodings)

    # ------------------------------------------------------------------ responses
    @property
    def response(self) -> ResponseScorer | None:
        """The response scorer (judges answers), or None when the guard has no response part."""
        return self.fitted.response

    @property
    def response_threshold(self) -> float:
        """The response score at or above which an answer is harmful (``settings.response_threshold`` or fitted).

        Raises:
            ArtifactError: the guard has no response part.
        """
        scorer = self._response_scorer()
        override = self.settings.response_threshold
        return float(scorer.threshold) if override is None else float(override)

    def _response_scorer(self) -> ResponseScorer:
        if self.fitted.response is None:
            raise ArtifactError("this guard has no response part: add one with `latent-guardrail add-response "
                                "GUARD_DIR` (or latent_guardrail.response_fit.add_response) or use a guard with one")
        return self.fitted.response

    def encode_response(self, prompt: Prompt, response: str) -> AnswerEncoding:
        """``prompt`` rendered as the host reads it when it answers (not normalised) followed by ``response``.

        Raises:
            InputError: a bad prompt, or a response that is not a non-empty string.
        """
        encoding = self.encode(prompt, normalize=False)
        return encode_answer(self.host.tokenizer, encoding, response,
                             max_tokens=self.settings.max_tokens or self.host.max_positions)

    def check_response(self, prompt: Prompt, response: str) -> Verdict:
        """Judge ``response`` as the answer to ``prompt`` (one forward pass over prompt + response).

        The verdict has ``target="response"``; any text can be judged, so the host can judge another model's
        answers too. Raises as :meth:`check_response_batch`.
        """
        return self.check_response_batch([prompt], [response])[0]

    def check_response_batch(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Verdict]:
        """Judge each ``responses[i]`` as the answer to ``prompts[i]``: batched passes, verdicts in input order.

        Raises:
            InputError: not two lists of the same length, or a bad prompt / response (its index is named).
            ArtifactError: the guard has no response part.
        """
        for name, value in (("prompts", prompts), ("responses", responses)):
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise InputError(f"check_response_batch takes lists; {name} is a {type(value).__name__} "
                                 "(for one answer use check_response())")
        if len(prompts) != len(responses):
            raise InputError(f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt")
        scorer = self._response_scorer()
        answers = []
        for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            try:
                answers.append(self.encode_response(prompt, response))
            except InputError as exc:
                raise InputError(f"pair {index}: {exc}") from exc
        if not answers:
            return []
        try:
            with self.host.lock:
                states = read_answer_states(self.host.model, answers, scorer.layers,
                                            pad_token_id=self.host.tokenizer.pad_token_id, every=scorer.every,
                                            views=(scorer.view,), batch_size=self.settings.batch_size,
                                            layer_template=self.fitted.layer_template)
            return [self.response_verdict(answer.prompt, len(answer.answer_ids), scorer.score(rows, prompt),
                                          truncated=answer.truncated)
                    for answer, rows, prompt in zip(answers, states.views[scorer.view], states.prompts, strict=True)]
        except Exception as exc:  # any failure of the model work: the on_error policy decides (fail closed)
            return [self.response_failure(exc)] * len(answers)

    def response_verdict(self, prompt: PromptEncoding, answer_tokens: int, scored: ResponseScore, *,
                         truncated: bool = False) -> Verdict:
        """The verdict (``target="response"``) of an answer of ``answer_tokens`` tokens to ``prompt`` scored as
        ``scored``."""
        scorer = self._response_scorer()
        threshold = self.response_threshold
        if not (math.isfinite(scored.score) and all(math.isfinite(x) for x in scored.layer_scores)):
            raise NumericalError("response scores are not finite")
        return Verdict(harmful=scored.score >= threshold, score=scored.score, threshold=threshold,
                       mode=scorer.mode, layer_scores=dict(zip(scorer.layers, scored.layer_scores, strict=True)),
                       layers=scorer.layers, views=(scorer.view,), t_inst=prompt.t_inst,
                       t_post_inst=prompt.t_post_inst, num_tokens=len(prompt.input_ids) + answer_tokens,
                       truncated=truncated or prompt.truncated, sanitized=prompt.sanitized,
                       fingerprint=self.fingerprint, target="response", answer_tokens=answer_tokens,
                       weight_drift=self.weight_drift)

    def response_failure(self, exc: Exception) -> Verdict:
        """:meth:`failure_verdict` for a response check (``target="response"``; ``on_error="raise"`` re-raises)."""
        scorer = self.fitted.response
        threshold = self.settings.response_threshold if self.settings.response_threshold is not None else (
            scorer.threshold if scorer is not None else 0.0)
        return failure_verdict(exc, self.settings.on_error, mode="response", threshold=float(threshold),
                               fingerprint=self.fingerprint, weight_drift=self.weight_drift, target="response")

    # ------------------------------------------------------------------ async
    def _worker(self) -> ThreadPoolExecutor:
        """This guard's one worker thread for async checks (created on first use)."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-guard")
            return self._executor

    async def acheck(self, prompt: Prompt) -> Verdict:
        """:meth:`check` without blocking the event loop (runs in this guard's worker thread)."""
        return (await self.acheck_batch([prompt]))[0]

    async def acheck_batch(self, prompts: Sequence[Prompt], *, progress: bool = False) -> list[Verdict]:
        """:meth:`check_batch` without blocking the event loop.

        The torch work runs in one worker thread per guard, so concurrent callers queue there instead of
        holding one pool thread each while they wait for the host lock. Errors are those of :meth:`check_batch`.
        """
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
            raise InputError(f"acheck_batch takes a list of prompts, got {type(prompts).__name__}; "
                             "for one prompt use acheck()")
        batch = list(prompts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker(), lambda: self.check_batch(batch, progress=progress))

    def close(self) -> None:
        """Stop the async worker thread (a later async check starts a new one). Idempotent."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def failure_verdict(self, exc: Exception) -> Verdict:
        """Apply the ``on_error`` policy to an internal failure: a blocking or allowing error verdict, or raise.

        Every failure is logged with its reason code (also as the log record's ``reason`` attribute:
        ``non_finite_states`` or ``internal_error:<ExceptionType>``); the verdict is built fresh each time (never
        cached).
        """
        return failure_verdict(exc, self.settings.on_error, mode=self.mode, threshold=self.threshold,
                               fingerprint=self.fingerprint, weight_drift=self.weight_drift)

    def overflow_verdict(self, encoding: PromptEncoding) -> Verdict:
        """The blocking verdict for a prompt cut to fit ``max_chars``/``max_tokens`` when ``on_overflow="block"``.

        ``status="error"``, ``error="input_too_long"``, ``truncated=True``; logged like every failure.
        """
        return overflow_verdict(encoding, mode=self.mode, threshold=self.threshold, fingerprint=self.fingerprint,
                                weight_drift=self.weight_drift)

    def __repr__(self) -> str:
        return (f"LatentGuard(host={self.host.name!r}, mode={self.mode!r}, layers={list(self.layers)}, "
                f"threshold={self.threshold:.4f})")


def _merge(saved: GuardSettings, override: GuardSettings | None) -> GuardSettings:
    """The saved settings with the fields that ``override`` sets explicitly."""
    if override is None:
        return saved
    return GuardSettings.model_validate({**saved.model_dump(), **override.model_dump(exclude_unset=True)})


def shipped_default_guard() -> Path | None:
    """The default guard shipped in the package (fitted for the default host), or None when absent."""
    folder = Path(str(resources.files("latent_guardrail") / "default_guard"))
    return folder if (folder / "guard.json").is_file() else None


def _default_guard_for(host: Host, progress: bool) -> Path:
    """The folder of the default guard for ``host``: the shipped one when it was fitted for this host (or for its
    model with other weights: a fine-tune of the default host, which the fingerprint check then refuses or, with
    ``allow_weight_drift``, accepts), else a cached fit (made now when missing)."""
    shipped = shipped_default_guard()
    if shipped is not None:
        parts = json.loads((shipped / "guard.json").read_text(encoding="utf-8")).get("fingerprint_parts")
        actual = host.fingerprint_parts(None)
        if isinstance(parts, dict) and all(parts.get(key) == actual.get(key) for key in set(parts) | set(actual)
                                           if key != WEIGHTS_PART):
            return shipped
    folder = default_guard_dir(host)
    if not (folder / "guard.json").is_file():
        logger.info("fitting the default guard on the bundled calibration sets (first use for this host)")
        build_default_guard(host, folder, progress=progress)
        # the output rail: a response scorer on the bundled answers (made by the default host, read by this one)
        save_fitted(add_response(host, load_fitted(folder)), folder)
    return folder


def build_default_guard(host: Host, out: str | os.PathLike[str], *, root: Path | None = None, every: int = 1,
                        progress: bool = True) -> Path:
    """Fit the default guard (:data:`DEFAULT_RECIPE` on the calibration sets under ``root``, the bundled ones
    by default; ``every`` > 1 keeps every k-th row of each class and a k-th of the refusal-direction prompts, at
    least 8, for a quick rebuild) and save it to ``out``.

    The fit is deterministic: the same host, sets and recipe give the same artifact on the same machine.
    """
    harmful, harmless = read_calibration_sets(root)
    recipe = DEFAULT_RECIPE if every == 1 else DEFAULT_RECIPE.model_copy(
        update={"refusal_prompts": max(8, DEFAULT_RECIPE.refusal_prompts // every)})
    fitted = calibrate(host, harmful[::every], harmless[::every], settings=recipe,
                       guard_settings=DEFAULT_GUARD_SETTINGS, progress=progress)
    return save_fitted(fitted, out)


def default_guard_dir(host: Host) -> Path:
    """Cache folder of the default guard for ``host``, keyed by host, bundled sets and fitting recipe."""
    digest = hashlib.sha256(_DEFAULT_GUARD_VERSION.encode())
    digest.update(str(sorted(host.fingerprint_parts(None).items())).encode())
    harmful, harmless = read_calibration_sets()
    for record in harmful + harmless:
        digest.update(f"{record.label}|{record.category}|{record.text}\n".encode())
    digest.update(DEFAULT_RECIPE.model_dump_json().encode())
    digest.update(DEFAULT_GUARD_SETTINGS.model_dump_json().encode())
    for pair in read_response_sets():
        digest.update(f"{pair.label}|{pair.group}|{pair.prompt}|{pair.response}\n".encode())
    return cache_root() / "guards" / f"default-{digest.hexdigest()[:12]}"
