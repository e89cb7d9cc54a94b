"""Data-parallel calibration and evaluation over the processes of an ``accelerate launch`` (or ``torchrun``).

Calibration and evaluation spend their time in two loops over prompts: reading hidden states
(:func:`latent_guardrail.activations.extract_states`) and, for the paper's behaviour selection, generating
greedy replies (:func:`latent_guardrail.generation.generate_replies`). Both are reached through a
:class:`Workers` strategy. :class:`LocalWorkers` runs them in this process; :class:`DataParallel` gives each
process a shard and gathers the results with accelerate's collectives, so every process ends with the same
full result and fits the same guard.

Exactly the same guard as one process, by construction: the batches come from the one planner
(:func:`latent_guardrail.batching.plan_batches`, which the single-process loops use too) and whole batches are
dealt round-robin to the processes (:func:`latent_guardrail.batching.split_plan`: rank ``r`` gets batches
``r, r + W, r + 2W …``, which also balances their lengths). Every batch therefore holds the same prompts with
the same padding as in a single-process run, and the gathered states are put back in input order before
anything is fitted.

Failures: every collective names what it was doing; when another process dies (out of memory, killed) the
survivors raise :class:`DistributedError` instead of a bare backend error, and nothing is saved, since
artifacts are written (atomically) only after the last collective. A collective that never completes ends
after ``timeout_s``.

Typical use (every process runs the same script; only the main process saves)::

    workers = DataParallel()
    host = load_host(model, device=workers.device)
    fitted = calibrate(host, harmful, harmless, workers=workers)
    if workers.is_main:
        save_fitted(fitted, "guard/")
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .activations import extract_states
from .batching import split_plan
from .errors import LatentGuardError
from .generation import generate_replies
from .hosts import Host
from .positions import Prompt, PromptEncoding
from .settings import GuardSettings
from .verdict import Verdict
from .views import View, view_names

__all__ = [
    "CheckableGuard",
    "DataParallel",
    "DistributedError",
    "LocalWorkers",
    "Workers",
    "batch_plan",
    "launched_world_size",
]

_T = TypeVar("_T")
_GATHER_BYTES = 64 << 20
"""States are gathered in slices of about this many bytes per process (bounded device memory)."""


class DistributedError(LatentGuardError):
    """A data-parallel run failed: a process died or hung, or the processes were given different inputs."""


class Workers(Protocol):
    """Runs the prompt loops of calibration and evaluation (in this process, or spread over several)."""

    @property
    def is_main(self) -> bool:
        """True in the process that reports and saves (the only process of a local run)."""
        ...

    def extract_states(self, model: nn.Module, encodings: Sequence[PromptEncoding], layers: Sequence[int], *,
                       pad_token_id: int, views: Sequence[str | View] = ("t_inst",), batch_size: int = 16,
                       layer_template: str | None = None, progress: bool | str = False) -> torch.Tensor:
        """States ``(n_prompts, len(views), len(layers), d_model)`` float32 on the CPU, in input order."""
        ...

    def generate_replies(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         encodings: Sequence[PromptEncoding], *, max_new_tokens: int = 128, batch_size: int = 16,
                         progress: bool | str = False) -> list[str]:
        """Greedy replies of every prompt, in input order."""
        ...


class LocalWorkers:
    """Everything in this process (the default)."""

    @property
    def is_main(self) -> bool:
        """Always True."""
        return True

    def extract_states(self, model: nn.Module, encodings: Sequence[PromptEncoding], layers: Sequence[int], *,
                       pad_token_id: int, views: Sequence[str | View] = ("t_inst",), batch_size: int = 16,
                       layer_template: str | None = None, progress: bool | str = False) -> torch.Tensor:
        """See :func:`latent_guardrail.activations.extract_states`: ``(n, len(views), len(layers), d)``."""
        return extract_states(model, encodings, layers, pad_token_id=pad_token_id, views=views,
                              batch_size=batch_size, layer_template=layer_template, progress=progress)

    def generate_replies(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         encodings: Sequence[PromptEncoding], *, max_new_tokens: int = 128, batch_size: int = 16,
                         progress: bool | str = False) -> list[str]:
        """See :func:`latent_guardrail.generation.generate_replies`."""
        return generate_replies(model, tokenizer, encodings, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)


def launched_world_size() -> int:
    """Number of processes this one was launched with (``accelerate launch``, ``torchrun``, MPI); 1 otherwise."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return max(1, int(value))
    return 1


def batch_plan(lengths: Sequence[int], batch_size: int, world_size: int) -> list[list[int]]:
    """Prompt indices each process reads, in the order it reads them: :func:`latent_guardrail.batching.split_plan`.

    Kept under this name for callers of earlier releases.

    Raises:
        ValueError: ``batch_size`` or ``world_size`` below 1.
    """
    return split_plan(lengths, batch_size, world_size)


class _LayerTemplate(Protocol):
    """The part of a fitted guard that locates its decoder blocks."""

    @property
    def layer_template(self) -> str | None:
        """Attribute path of the decoder blocks (None: found by shape)."""
        ...


@runtime_checkable
class CheckableGuard(Protocol):
    """What :meth:`DataParallel.check_batch` reads of a guard (:class:`~latent_guardrail.LatentGuard` is one).

    A structural type, so this module needs nothing from the guard's module (which sits above it).
    """

    @property
    def host(self) -> Host:
        """The host model the guard reads."""
        ...

    @property
    def settings(self) -> GuardSettings:
        """The guard's settings (``batch_size`` is read)."""
        ...

    @property
    def fitted(self) -> _LayerTemplate:
        """The fitted guard (``layer_template`` is read)."""
        ...

    @property
    def layers(self) -> tuple[int, ...]:
        """Residual layers the scorer reads."""
        ...

    @property
    def views(self) -> Sequence[str | View]:
        """What the scorer reads at each layer (:mod:`latent_guardrail.views`)."""
        ...

    def encode(self, prompt: Prompt) -> PromptEncoding:
        """Render and tokenize one prompt as the guard checks it."""
        ...

    def verdicts_from_states(self, encodings: Sequence[PromptEncoding], states: torch.Tensor) -> list[Verdict]:
        """Verdicts from states ``(n, len(views), len(layers), d)`` of ``encodings``."""
        ...


def _digest(encodings: Sequence[PromptEncoding], *extra: object) -> str:
    """A hash of the encoded prompts and the options that decide the batches (compared across processes)."""
    digest = hashlib.sha256(repr(extra).encode())
    for encoding in encodings:
        digest.update(repr((encoding.input_ids, encoding.t_inst, encoding.t_post_inst,
                            encoding.t_content_start)).encode())
    return digest.hexdigest()


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


class DataParallel:
    """Spread prompt loops over the processes of an ``accelerate launch``: each reads a shard, all get the result.

    Args:
        timeout_s: how long a collective may wait for the other processes before the run fails (used when
            this creates the process group; accelerate's default is 30 minutes).
        cpu: force the CPU/gloo backend (default: when this machine has no accelerator, or
            ``ACCELERATE_USE_CPU`` is set, as ``accelerate launch --cpu`` does).

    Raises:
        DistributedError: the process group cannot be set up.
    """

    def __init__(self, *, timeout_s: float | None = None, cpu: bool | None = None) -> None:
        from accelerate import PartialState

        use_cpu = cpu if cpu is not None else (
            os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not _accelerator_available())
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        self._owns_group = not torch.distributed.is_initialized()
        try:
            self._state = PartialState(cpu=use_cpu, **kwargs)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DistributedError(f"cannot set up the process group: {exc}. Launch with `accelerate launch "
                                   "--multi_gpu --num_processes N ...` or `torchrun --nproc_per_node N ...`") from exc

    # ------------------------------------------------------------------ identity
    @property
    def rank(self) -> int:
        """This process's index, ``0..world_size-1``."""
        return int(self._state.process_index)

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return int(self._state.num_processes)

    @property
    def is_main(self) -> bool:
        """True in process 0, which reports and saves."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this process should load its host on (``cuda:<local rank>``, or ``cpu``)."""
        return torch.device(self._state.device)

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, backend={self._state.backend!r})"

    # ------------------------------------------------------------------ collectives
    def _collective(self, what: str, run: Callable[[], _T]) -> _T:
        """Run one collective; a failure (a process died or hung) becomes a :class:`DistributedError`."""
        try:
            return run()
        except (RuntimeError, OSError, ValueError) as exc:
            raise DistributedError(
                f"process {self.rank} of {self.world_size}: the process group failed while {what} ({exc}). "
                "Another process probably died (out of memory, killed) or hung; see its log above. "
                "Nothing was saved; rerun the launch.") from exc

    def gather_objects(self, item: Any, what: str) -> list[Any]:
        """``item`` of every process, in rank order (picklable objects; small ones)."""
        from accelerate.utils import gather_object

        return list(self._collective(what, lambda: gather_object([item])))

    def agree_min(self, value: int, what: str = "agreeing on a batch size") -> int:
        """The smallest ``value`` over the processes (e.g. a batch size each probed on its own device)."""
        return int(min(self.gather_objects(int(value), what)))

    def barrier(self, what: str = "waiting for the other processes") -> None:
        """Wait until every process gets here."""
        self._collective(what, self._state.wait_for_everyone)

    def close(self) -> None:
        """Tear down the process group if this object set it up (a script that made its own keeps it)."""
        if self._owns_group and torch.distributed.is_initialized():
            self._state.destroy_process_group()

    def _check_same(self, encodings: Sequence[PromptEncoding], what: str, *options: object) -> None:
        digests = self.gather_objects(_digest(encodings, *options), f"comparing the inputs of {what}")
        if len(set(digests)) != 1:
            differ = [rank for rank, value in enumerate(digests) if value != digests[0]]
            raise DistributedError(f"{what}: processes {differ} were given other prompts or options than process "
                                   "0; every process must read the same files with the same options")

    def _gather_rows(self, local: torch.Tensor, counts: list[int], what: str) -> list[torch.Tensor]:
        """Every process's rows: ``local`` is ``(counts[rank], *shape)``; returns one CPU tensor per process."""
        from accelerate.utils import gather

        shape = tuple(local.shape[1:])
        row_bytes = max(1, int(torch.Size(shape).numel()) * local.element_size())  # the same in every process
        step = max(1, _GATHER_BYTES // row_bytes)
        parts: list[list[torch.Tensor]] = [[] for _ in counts]
        for start in range(0, max(counts), step):
            piece = torch.zeros((step, *shape), dtype=local.dtype)
            mine = local[start:start + step]
            piece[: mine.shape[0]] = mine
            gathered = self._collective(what, functools.partial(gather, piece.to(self.device))).to("cpu")
            # gathered: (world_size * step, *shape), process r's rows first at r * step
            for rank, count in enumerate(counts):
                rows = max(0, min(step, count - start))
                if rows:
                    parts[rank].append(gathered[rank * step: rank * step + rows])
        return [torch.cat(rows) if rows else torch.zeros((0, *shape), dtype=local.dtype) for rows in parts]

    # ------------------------------------------------------------------ the Workers strategy
    def extract_states(self, model: nn.Module, encodings: Sequence[PromptEncoding], layers: Sequence[int], *,
                       pad_token_id: int, views: Sequence[str | View] = ("t_inst",), batch_size: int = 16,
                       layer_template: str | None = None, progress: bool | str = False) -> torch.Tensor:
        """Each process reads its batches (:func:`~latent_guardrail.batching.split_plan`); all get the states.

        Returns ``(n, len(views), len(layers), d)`` float32 on the CPU, in input order.

        Raises:
            DistributedError: a process died or hung, or the processes were given different prompts.
        """
        if self.world_size == 1:
            return LocalWorkers().extract_states(model, encodings, layers, pad_token_id=pad_token_id, views=views,
                                                 batch_size=batch_size, layer_template=layer_template,
                                                 progress=progress)
        self._check_same(encodings, "reading hidden states", tuple(layers), view_names(views), batch_size, pad_token_id)
        plan = split_plan([len(e.input_ids) for e in encodings], batch_size, self.world_size)
        mine = plan[self.rank]
        local = extract_states(model, [encodings[i] for i in mine], layers, pad_token_id=pad_token_id, views=views,
                               batch_size=batch_size, layer_template=layer_template,
                               progress=progress if self.is_main else False) if mine else None
        shapes = self.gather_objects(None if local is None else tuple(local.shape[1:]), "sharing state shapes")
        shape = next(item for item in shapes if item is not None)
        rows = self._gather_rows(local if local is not None else torch.zeros((0, *shape)),
                                 [len(indices) for indices in plan], "gathering hidden states")
        out = torch.empty((len(encodings), *shape), dtype=torch.float32)
        for indices, part in zip(plan, rows, strict=True):
            if indices:
                out[torch.tensor(indices)] = part
        return out

    def generate_replies(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         encodings: Sequence[PromptEncoding], *, max_new_tokens: int = 128, batch_size: int = 16,
                         progress: bool | str = False) -> list[str]:
        """Each process generates for its batches; all get every reply, in input order.

        Raises:
            DistributedError: a process died or hung, or the processes were given different prompts.
        """
        if self.world_size == 1:
            return LocalWorkers().generate_replies(model, tokenizer, encodings, max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size, progress=progress)
        self._check_same(encodings, "generating replies", max_new_tokens, batch_size)
        plan = split_plan([len(e.input_ids) for e in encodings], batch_size, self.world_size)
        mine = plan[self.rank]
        local = generate_replies(model, tokenizer, [encodings[i] for i in mine], max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, progress=progress if self.is_main else False) if mine else []
        replies = self.gather_objects(local, "gathering generated replies")
        out = [""] * len(encodings)
        for indices, texts in zip(plan, replies, strict=True):
            for index, text in zip(indices, texts, strict=True):
                out[index] = text
        return out

    # ------------------------------------------------------------------ evaluation
    def check_batch(self, guard: CheckableGuard, prompts: Sequence[Prompt], *,
                    progress: bool = False) -> list[Verdict]:
        """:meth:`LatentGuard.check_batch` spread over the processes; every process gets every verdict.

        Unlike ``check_batch`` a failure raises (a process died, non-finite states) instead of returning error
        verdicts: an evaluation run should stop, not report a wrong figure.
        """
        encodings = [guard.encode(prompt) for prompt in prompts]
        if not encodings:
            return []
        with guard.host.lock:
            states = self.extract_states(guard.host.model, encodings, guard.layers,
                                         pad_token_id=guard.host.tokenizer.pad_token_id, views=guard.views,
                                         batch_size=guard.settings.batch_size,
                                         layer_template=guard.fitted.layer_template, progress=progress)
        return guard.verdicts_from_states(encodings, states)
