"""Directions in the residual stream and activation addition (steering).

The paper's two directions, per residual layer:

- harmfulness ``v_harmful = μ_harmful − μ_harmless`` at ``t_inst`` (the guard's centroids);
- refusal ``v_refuse = μ_refuse − μ_accept`` at ``t_post_inst`` (fitted with the guard).

Steering is activation addition at one layer, ``h' = h + c·v`` with the raw (unnormalised) vector::

    direction = Direction.from_guard(guard, "refusal")
    with steer(guard, direction, layer=9, coeff=1.0):        # every prompt token of the prefill pass
        out = guard.host.model.generate(...)

Layers are residual layers as in :mod:`latent_guardrail.layers`: ``layer < num_blocks`` adds to the *input* of
decoder block ``layer`` (a forward pre-hook, where :mod:`latent_guardrail.activations` reads it) and
``layer == num_blocks`` to the output of the last block (a forward hook). Negative layers count from the end.

Which tokens are steered (``positions``):

- ``"prompt"``: every non-padding token of the prefill pass (the pass that starts with an empty KV cache);
  decoding steps see the steering only through the cache, unless ``decode=True``.
- ``"all"``: the prefill pass and every decoding step.
- ``"context"``: only prefill tokens at padded positions ``< until`` (``until``: an int or a ``(batch,)`` tensor,
  padded coordinates as in :class:`~latent_guardrail.positions.PaddedBatch`); decoding steps only if ``decode``.

Padding (``attention_mask == 0``) is never touched: the 2-D mask is read from the call to the steered model
(``model(..., attention_mask=...)``, as ``generate`` passes it every step), or else from the ``attention_mask``
argument; without either, every token counts as real. Untouched positions keep their exact values.

Composition: steerings are independent hooks; two active on one model add up (``h + c1·v1 + c2·v2`` — at one
layer in registration order, so equal to a single steering by ``c1·v1 + c2·v2`` up to float rounding).

Hooks exist only while a steering is active: :func:`steer` removes them in ``finally``; :func:`add_steering` returns
a :class:`SteeringHandle` whose ``remove()`` may be called any number of times. Like all hooked work, steering a
model that other threads run at the same time is unsafe; serialise with ``Host.lock``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from .activations import extract_states
from .decoding import check_max_new_tokens
from .directions import mean_difference
from .errors import ArtifactError, FingerprintMismatchError, InputError, LayerError
from .fingerprint import fingerprint_parts
from .generation import generate_replies
from .guard import LatentGuard
from .hosts import Host
from .layers import check_layers, decoder_blocks
from .positions import Prompt, encode_batch
from .refusal import Judge, PhraseJudge
from .settings import SAFETY_SYSTEM_PROMPT

__all__ = ["Direction", "DirectionKind", "Positions", "SteeringHandle", "SweepResult", "add_steering",
           "default_steer_layer", "fit_refusal_direction", "steer", "sweep"]

DirectionKind = Literal["harmfulness", "refusal"]
Positions = Literal["prompt", "context", "all"]
KINDS: tuple[str, ...] = ("harmfulness", "refusal")
POSITIONS: tuple[str, ...] = ("prompt", "context", "all")
_HOST_PARTS = ("model", "tokenizer", "chat_template", "weights")  # a host's identity without the system prompt


@dataclass(frozen=True)
class Direction:
    """A direction per residual layer, tied to the host it was fitted on.

    ``vectors``: ``(len(layers), d)`` float32; row ``i`` belongs to residual layer ``layers[i]`` (a guard's
    directions cover every layer ``0..num_blocks``). ``fingerprint``: the guard's fingerprint;
    ``fingerprint_parts``: its components (checked against a :class:`Host` part by part).
    """

    kind: DirectionKind
    vectors: torch.Tensor
    fingerprint: str
    source: str
    layers: tuple[int, ...] = ()
    fingerprint_parts: Mapping[str, str] = field(default_factory=dict)
    layer_template: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.vectors, torch.Tensor) or self.vectors.dim() != 2:
            raise InputError("Direction.vectors must be a (layers, d) tensor")
        object.__setattr__(self, "vectors", self.vectors.detach().to("cpu", torch.float32))
        if not self.layers:
            object.__setattr__(self, "layers", tuple(range(self.vectors.shape[0])))
        if len(self.layers) != self.vectors.shape[0]:
            raise InputError(f"{len(self.layers)} layers for {self.vectors.shape[0]} vectors")

    @classmethod
    def from_guard(cls, guard: LatentGuard, kind: DirectionKind) -> Direction:
        """The guard's fitted harmfulness or refusal direction.

        Raises:
            InputError: unknown ``kind``.
            ArtifactError: the guard has no refusal direction (recalibrate it).
        """
        fitted = guard.fitted
        if kind == "harmfulness":
            vectors = fitted.centroids.harmfulness_direction
            layers = tuple(fitted.centroids.layers)
            source = "mean(harmful) - mean(harmless) at t_inst"
        elif kind == "refusal":
            if fitted.refusal_direction is None:
                raise ArtifactError("this guard has no refusal direction; recalibrate it with "
                                    "LatentGuard.calibrate(...) or `latent-guardrail calibrate` to fit one")
            vectors = fitted.refusal_direction
            layers = tuple(range(vectors.shape[0]))
            source = f"refusal direction at t_post_inst ({fitted.refusal_source or 'unknown source'})"
        else:
            raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
        return cls(kind=kind, vectors=vectors, fingerprint=fitted.fingerprint, source=source, layers=layers,
                   fingerprint_parts=dict(fitted.fingerprint_parts), layer_template=fitted.layer_template)

    def vector(self, layer: int) -> torch.Tensor:
        """The ``(d,)`` vector of residual layer ``layer`` (a non-negative index)."""
        if layer not in self.layers:
            raise LayerError(f"the {self.kind} direction has no vector for layer {layer}: it covers layers "
                             f"{min(self.layers)}..{max(self.layers)}")
        return self.vectors[self.layers.index(layer)]


class SteeringHandle:
    """Active steering hooks on one model. ``remove()`` is idempotent; also usable as a context manager."""

    def __init__(self, handles: list[torch.utils.hooks.RemovableHandle], layer: int, coeff: float) -> None:
        self._handles = handles
        self.layer = layer
        self.coeff = coeff

    @property
    def active(self) -> bool:
        """True until :meth:`remove` is called."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook of this steering (safe to call twice)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"SteeringHandle(layer={self.layer}, coeff={self.coeff}, active={self.active})"


def _resolve_target(target: nn.Module | Host | LatentGuard, direction: torch.Tensor | Direction
                    ) -> tuple[nn.Module, str | None]:
    """The model to hook and the default layer template; checks a Direction's fingerprint."""
    if isinstance(target, LatentGuard):
        if isinstance(direction, Direction) and direction.fingerprint != target.fingerprint:
            raise FingerprintMismatchError(
                f"the {direction.kind} direction was fitted for another host or system prompt (fingerprint "
                f"{direction.fingerprint}, this guard's is {target.fingerprint}); take it from this guard with "
                "Direction.from_guard(guard, ...)")
        return target.host.model, target.fitted.layer_template
    if isinstance(target, Host):
        if isinstance(direction, Direction) and direction.fingerprint_parts:
            actual = fingerprint_parts(target.model, target.tokenizer, None)
            differing = [key for key in _HOST_PARTS if direction.fingerprint_parts.get(key) != actual.get(key)]
            if differing:
                raise FingerprintMismatchError(
                    f"the {direction.kind} direction was fitted for another host: {', '.join(differing)} differ. "
                    "Use a direction from a guard calibrated on this model")
        return target.model, None
    if isinstance(target, nn.Module):
        return target, None
    raise InputError(f"steer needs a torch model, a Host or a LatentGuard, got {type(target).__name__}")


def _check_coeff(coeff: object) -> float:
    if isinstance(coeff, bool) or not isinstance(coeff, numbers.Real):
        raise InputError(f"coeff must be a real number, got {coeff!r}")
    value = float(coeff)
    if not math.isfinite(value):
        raise InputError(f"coeff must be finite, got {value}")
    return value


def _check_vector(vector: torch.Tensor, hidden_size: int | None) -> torch.Tensor:
    if vector.dim() != 1:
        raise InputError(f"a steering vector must have shape (d,), got {tuple(vector.shape)}")
    if hidden_size is not None and vector.shape[0] != hidden_size:
        raise InputError(f"the steering vector has size {vector.shape[0]}, the model's hidden size is {hidden_size}")
    vector = vector.detach().to(torch.float32)
    if not bool(torch.isfinite(vector).all()):
        raise InputError("the steering vector has NaN or inf entries")
    if float(vector.norm()) == 0.0:
        raise InputError("the steering vector has zero norm: it would not steer anything")
    return vector


def _call_arguments(module: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


def _check_positions(positions: str, until: object, attention_mask: torch.Tensor | None) -> None:
    """Validate which tokens are steered (see the module docstring)."""
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if positions == "context" and until is None:
        raise InputError("positions='context' needs until=... (an int or a (batch,) tensor, padded coordinates)")
    if positions != "context" and until is not None:
        raise InputError(f"until= is only used with positions='context', not {positions!r}")
    if isinstance(until, bool) or (until is not None and not isinstance(until, int | torch.Tensor)):
        raise InputError(f"until must be an int or a (batch,) tensor, got {type(until).__name__}")
    if isinstance(until, torch.Tensor) and until.dim() != 1:
        raise InputError(f"until must have shape (batch,), got {tuple(until.shape)}")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise InputError(f"attention_mask must have shape (batch, seq), got {tuple(attention_mask.shape)}")


def _raw_vector(direction: torch.Tensor | Direction, layer: int, num_blocks: int) -> torch.Tensor:
    """The unchecked ``(d,)`` vector of residual ``layer`` (non-negative) in ``direction``."""
    if isinstance(direction, Direction):
        return direction.vector(layer)
    if isinstance(direction, torch.Tensor):
        if direction.dim() != 2:
            return direction
        if direction.shape[0] != num_blocks + 1:
            raise InputError(f"a (layers, d) direction needs {num_blocks + 1} rows (one per residual layer), "
                             f"got {direction.shape[0]}")
        return direction[layer]
    raise InputError(f"direction must be a Direction or a tensor, got {type(direction).__name__}")


def _hidden_size(module: nn.Module) -> int | None:
    """The model's ``config.hidden_size`` when it has one."""
    size = getattr(getattr(module, "config", None), "hidden_size", None)
    return size if isinstance(size, int) else None


@dataclass
class _CallState:
    """What the steered model's current forward call was given (2-D mask, cache length)."""

    mask: torch.Tensor | None = None
    past: int | None = None


class _Steerer:
    """The hook functions of one steering: ``hidden + delta`` at the steered positions, the rest untouched.

    ``on_call``/``on_return`` hook the model itself and record each call's 2-D attention mask and cache length
    (:class:`_CallState`); ``pre_hook`` (input of a decoder block) or ``post_hook`` (output of the last block)
    apply :meth:`steered` to the hidden states ``(batch, seq, d)``.
    """

    def __init__(self, delta: torch.Tensor, *, prefill_all: bool, decode: bool, until: int | torch.Tensor | None,
                 attention_mask: torch.Tensor | None, signature: inspect.Signature | None) -> None:
        self.delta = delta  # (d,) float32: coeff * v
        self.prefill_all = prefill_all  # "prompt"/"all": every real prefill token; "context": those < until
        self.decode = decode  # decoding steps too (passes that continue a cache)
        self.until = until
        self.attention_mask = attention_mask
        self.signature = signature
        self.state = _CallState()
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def on_call(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of the model: remember the call's 2-D mask and how long its cache already is."""
        bound: dict[str, Any] = dict(kwargs)
        if args and self.signature is not None:
            try:
                bound = dict(self.signature.bind_partial(*args, **kwargs).arguments)
            except TypeError:
                pass
        mask = bound.get("attention_mask")
        self.state.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = bound.get("cache", bound.get("past_key_values"))
        get_length = getattr(cache, "get_seq_length", None)
        self.state.past = int(get_length()) if callable(get_length) else 0

    def on_return(self, _module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], _output: Any) -> None:
        """Forward hook of the model (also on exceptions): the call is over."""
        self.state.mask, self.state.past = None, None

    def _past(self, seq: int) -> int:
        """Tokens already in the cache before these ``seq`` tokens (0 for a prefill)."""
        if self.state.past is not None:
            return self.state.past
        if self.state.mask is not None:
            return max(self.state.mask.shape[1] - seq, 0)
        return 0

    def _keep(self, batch: int, seq: int, past: int, device: torch.device) -> torch.Tensor:
        """``(batch, seq)`` bool: which of these tokens are steered (real tokens; before ``until`` for context)."""
        mask = self.state.mask if self.state.mask is not None else self.attention_mask
        where = torch.arange(past, past + seq, device=device)  # padded positions of these tokens
        keep = torch.ones(batch, seq, dtype=torch.bool, device=device)
        if mask is not None:
            if mask.shape[0] != batch:
                raise InputError(f"attention_mask has batch {mask.shape[0]}, the model runs batch {batch}")
            mask = mask.to(device)
            inside = where < mask.shape[1]
            keep[:, inside] = mask[:, where[inside]] != 0  # positions beyond the mask are generated tokens
        if past == 0 and not self.prefill_all:  # "context": only positions before until
            limit = self.until if isinstance(self.until, torch.Tensor) else torch.tensor([self.until])
            if limit.shape[0] not in (1, batch):
                raise InputError(f"until has batch {limit.shape[0]}, the model runs batch {batch}")
            keep &= where.view(1, -1) < limit.to(device).view(-1, 1)
        return keep

    def _delta_for(self, hidden: torch.Tensor) -> torch.Tensor:
        """``delta`` in the dtype and on the device of ``hidden`` (cast once per pair)."""
        key = (hidden.dtype, hidden.device)
        if key not in self._cast:
            self._cast[key] = self.delta.to(device=hidden.device, dtype=hidden.dtype)
        return self._cast[key]

    def steered(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` ``(batch, seq, d)`` with ``delta`` added at the steered tokens."""
        batch, seq = hidden.shape[0], hidden.shape[1]
        past = self._past(seq)
        if past > 0 and not self.decode:
            return hidden
        keep = self._keep(batch, seq, past, hidden.device)
        return torch.where(keep.unsqueeze(-1), hidden + self._delta_for(hidden), hidden)

    def pre_hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Forward pre-hook of decoder block ``layer``: steer its input hidden states."""
        if args and isinstance(args[0], torch.Tensor):
            return (self.steered(args[0]), *args[1:]), kwargs
        hidden = kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError("cannot find the hidden states among the decoder block's inputs")
        return args, {**kwargs, "hidden_states": self.steered(hidden)}

    def post_hook(self, _module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook of the last decoder block: steer its output hidden states."""
        if isinstance(output, torch.Tensor):
            return self.steered(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (self.steered(output[0]), *output[1:])
        raise RuntimeError(f"cannot find the hidden states in the last block's output ({type(output).__name__})")


def _register(module: nn.Module, blocks: Sequence[nn.Module], layer: int, steerer: _Steerer,
              coeff: float) -> SteeringHandle:
    """Install ``steerer``'s hooks; on a failure half way, the ones already installed are removed."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    steering = SteeringHandle(handles, layer, coeff)
    try:
        handles.append(module.register_forward_pre_hook(steerer.on_call, with_kwargs=True))
        handles.append(module.register_forward_hook(steerer.on_return, with_kwargs=True, always_call=True))
        if layer < len(blocks):
            handles.append(blocks[layer].register_forward_pre_hook(steerer.pre_hook, with_kwargs=True))
        else:
            handles.append(blocks[-1].register_forward_hook(steerer.post_hook))
    except BaseException:
        steering.remove()
        raise
    return steering


def add_steering(
    model: nn.Module | Host | LatentGuard,
    direction: torch.Tensor | Direction,
    *,
    layer: int,
    coeff: float,
    positions: Positions = "prompt",
    until: int | torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    decode: bool = False,
    layer_template: str | None = None,
) -> SteeringHandle:
    """Start adding ``coeff · v`` to the residual stream at ``layer``; returns the handle that stops it.

    Args:
        model: a causal LM (``nn.Module``), a :class:`Host`, or a :class:`LatentGuard` (its host's model). With a
            guard, a :class:`Direction` must carry the guard's fingerprint; with a host, the host's parts.
        direction: a :class:`Direction` (its vector at ``layer`` is used), a ``(d,)`` vector, or a
            ``(num_blocks + 1, d)`` tensor with one vector per residual layer.
        layer: residual layer ``0..num_blocks`` (negative counts from the end).
        coeff: finite coefficient ``c`` (``1``, sometimes ``2``, in the paper; negative reverses).
        positions: ``"prompt"``, ``"context"`` or ``"all"`` (see the module docstring).
        until: for ``"context"``: steer padded positions ``< until``; an int or a ``(batch,)`` LongTensor.
        attention_mask: ``(batch, seq)`` 2-D mask used when the model is called without one.
        decode: also steer decoding steps (implied by ``"all"``).
        layer_template: where the decoder blocks are (guessed when None; a guard's or direction's otherwise).

    Raises:
        LayerError: ``layer`` is out of range (the message lists the valid range).
        InputError: non-finite coefficient, zero-norm/NaN vector, wrong size, bad ``positions``/``until``.
        FingerprintMismatchError: the direction was fitted for another host.
    """
    module, target_template = _resolve_target(model, direction)
    coefficient = _check_coeff(coeff)
    _check_positions(positions, until, attention_mask)
    template = layer_template or target_template or (direction.layer_template if isinstance(direction, Direction)
                                                     else None)
    blocks = decoder_blocks(module, template)
    (resolved,) = check_layers([layer], len(blocks))
    delta = coefficient * _check_vector(_raw_vector(direction, resolved, len(blocks)), _hidden_size(module))
    steerer = _Steerer(delta, prefill_all=positions in ("prompt", "all"), decode=decode or positions == "all",
                       until=until, attention_mask=attention_mask, signature=_call_arguments(module))
    return _register(module, blocks, resolved, steerer, coefficient)


@contextmanager
def steer(
    model: nn.Module | Host | LatentGuard,
    direction: torch.Tensor | Direction,
    *,
    layer: int,
    coeff: float,
    positions: Positions = "prompt",
    until: int | torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    decode: bool = False,
    layer_template: str | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block: :func:`add_steering`'s arguments; hooks are removed on exit."""
    handle = add_steering(model, direction, layer=layer, coeff=coeff, positions=positions, until=until,
                          attention_mask=attention_mask, decode=decode, layer_template=layer_template)
    try:
        yield handle
    finally:
        handle.remove()


def default_steer_layer(num_blocks: int) -> int:
    """The residual layer steer-on-block uses when none is set: 40 % of the depth.

    A generic starting point only: the best layer depends on the host and the direction (on the default host the
    behavioural direction works best deep, at layer 21 of 30 — README "Steering"). Set ``GuardSettings.steer_layer``
    from ``latent-guardrail steer --sweep`` for your host.
    """
    if num_blocks < 1:
        raise LayerError(f"a model needs at least one decoder block, got {num_blocks}")
    return round(0.4 * num_blocks)


class SweepResult(BaseModel):
    """Refusal rate of a prompt set per steered layer (the paper's Figure 4 shape).

    ``rates[layer]``: fraction of replies the judge calls refusals with ``coeff · v[layer]`` added;
    ``baseline``: the same without steering. ``best_layer``: the layer with the highest rate (lowest on ties).
    """

    model_config = ConfigDict(frozen=True)

    direction: str
    coeff: float
    positions: str
    prompts: int = Field(ge=1)
    max_new_tokens: int = Field(ge=1)
    baseline: float = Field(ge=0.0, le=1.0)
    rates: dict[int, float]
    best_layer: int
    examples: dict[int, str] = Field(default_factory=dict, description="First prompt's reply per layer.")

    def plot(self, path: str | Path) -> Path:
        """Save a line plot of refusal rate against layer (with the unsteered baseline) as PNG; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        layers = sorted(self.rates)
        fig, axis = plt.subplots(figsize=(6.4, 3.6))
        try:
            axis.plot(layers, [100 * self.rates[layer] for layer in layers], marker="o",
                      label=f"steered (c={self.coeff:g})")
            axis.axhline(100 * self.baseline, color="grey", linestyle="--", label="no steering")
            axis.set_xlabel("steered residual layer")
            axis.set_ylabel("refusal rate (%)")
            axis.set_ylim(-2, 102)
            axis.set_title(f"{self.direction} direction, {self.prompts} prompts, positions={self.positions}")
            axis.legend(loc="best")
            fig.tight_layout()
            fig.savefig(out, dpi=110)
        finally:
            plt.close(fig)
        return out


def fit_refusal_direction(
    guard: LatentGuard,
    harmful: Sequence[Prompt],
    *,
    system_prompt: str | None = SAFETY_SYSTEM_PROMPT,
    max_new_tokens: int = 8,
    judge: Judge | None = None,
    min_per_class: int = 5,
    batch_size: int = 32,
    progress: bool = False,
) -> Direction:
    """The paper's behavioural refusal direction, ``mean(refused) − mean(accepted)`` at ``t_post_inst``.

    ``harmful`` prompts are rendered under ``system_prompt`` (small hosts refuse some harmful requests only under a
    safety prompt: SmolLM2-135M refuses none without one), answered greedily, and judged; the states at
    ``t_post_inst`` of every residual layer give one vector per layer. Store it with
    ``guard.with_refusal_direction(direction.vectors, direction.source)``.

    Returns:
        a refusal :class:`Direction` ``(num_blocks + 1, d)`` carrying the guard's fingerprint.

    Raises:
        InputError: fewer than ``min_per_class`` refused or accepted prompts (the message gives both counts).
    """
    check_max_new_tokens(max_new_tokens)
    if len(harmful) < 2 * min_per_class:
        raise InputError(f"need at least {2 * min_per_class} harmful prompts, got {len(harmful)}")
    host = guard.host
    refuses = judge if judge is not None else PhraseJudge()
    num_blocks = guard.num_blocks
    encodings = encode_batch(host.tokenizer, harmful, system_prompt=system_prompt)
    with host.lock:
        replies = generate_replies(host.model, host.tokenizer, encodings, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, progress="judging refusals" if progress else False)
        refused = torch.tensor([bool(refuses(reply)) for reply in replies])
        count = int(refused.sum())
        if not min_per_class <= count <= len(replies) - min_per_class:
            raise InputError(f"the host refused {count} of {len(replies)} prompts; a behavioural direction needs at "
                             f"least {min_per_class} refused and {min_per_class} accepted (try a stronger system "
                             "prompt or more prompts)")
        states = extract_states(host.model, encodings, list(range(num_blocks + 1)),
                                pad_token_id=host.tokenizer.pad_token_id, views=("t_post_inst",),
                                batch_size=batch_size, layer_template=guard.fitted.layer_template,
                                progress="refusal states" if progress else False)[:, 0].double()  # (n, layers, d)
    vectors = mean_difference(states, refused).float()
    source = f"behaviour: {count} refused / {len(replies) - count} accepted harmful prompts" + (
        " under a system prompt" if system_prompt is not None else "")
    return Direction(kind="refusal", vectors=vectors, fingerprint=guard.fingerprint, source=source,
                     fingerprint_parts=dict(guard.fitted.fingerprint_parts), layer_template=guard.fitted.layer_template)


def sweep(
    guard: LatentGuard,
    prompts: Sequence[Prompt],
    *,
    direction: DirectionKind | Direction = "refusal",
    layers: Sequence[int] | None = None,
    coeff: float = 1.0,
    positions: Positions = "all",
    max_new_tokens: int = 24,
    judge: Judge | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> SweepResult:
    """Greedy replies to ``prompts`` steered at each layer in turn; the judge's refusal rate per layer.

    Args:
        guard: a fitted guard (its host generates; its direction is used; its system prompt is rendered).
        prompts: strings or message lists.
        direction: ``"refusal"`` or ``"harmfulness"`` (the guard's), or a :class:`Direction`.
        layers: residual layers to try (default: every layer ``0..num_blocks``).
        coeff: the coefficient ``c`` at every layer.
        positions: ``"prompt"`` (prefill only) or ``"all"`` (prefill and decoding); ``"context"`` is not swept.
        max_new_tokens: tokens per reply.
        judge: ``reply -> bool`` refusal judge (default: :class:`~latent_guardrail.refusal.PhraseJudge`).

    Raises:
        InputError: no prompts, bad ``positions``/``coeff``. LayerError: a layer out of range.
    """
    if not prompts:
        raise InputError("sweep needs at least one prompt")
    if positions not in ("prompt", "all"):
        raise InputError(f"sweep steers positions 'prompt' or 'all', got {positions!r}")
    _check_coeff(coeff)
    check_max_new_tokens(max_new_tokens)
    vectors = direction if isinstance(direction, Direction) else Direction.from_guard(guard, direction)
    model, tokenizer = guard.host.model, guard.host.tokenizer
    num_blocks = guard.num_blocks
    chosen = check_layers(list(range(num_blocks + 1)) if layers is None else list(layers), num_blocks)
    refuses = judge if judge is not None else PhraseJudge()
    encodings = [guard.encode(prompt) for prompt in prompts]

    def rate(replies: list[str]) -> float:
        return sum(bool(refuses(reply)) for reply in replies) / len(replies)

    rates: dict[int, float] = {}
    examples: dict[int, str] = {}
    with guard.host.lock:
        baseline = rate(generate_replies(model, tokenizer, encodings, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size))
        for layer in tqdm(chosen, desc=f"sweeping the {vectors.kind} direction", disable=not progress, unit="layer"):
            with steer(guard, vectors, layer=layer, coeff=coeff, positions=positions):
                replies = generate_replies(model, tokenizer, encodings, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
            rates[layer] = rate(replies)
            examples[layer] = replies[0]
    best = max(chosen, key=lambda layer: (rates[layer], -layer))
    return SweepResult(direction=vectors.kind, coeff=float(coeff), positions=positions, prompts=len(encodings),
                       max_new_tokens=max_new_tokens, baseline=baseline, rates=rates, best_layer=best,
                       examples=examples)
