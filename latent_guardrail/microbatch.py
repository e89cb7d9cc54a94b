"""``MicroBatcher``: checks that arrive together from many callers share one ``check_batch``.

Concurrent callers of :meth:`LatentGuard.check` queue on the host lock and each runs its own forward pass.
A :class:`MicroBatcher` wraps one guard and serves them together instead::

    batcher = MicroBatcher(guard, window_ms=2.0)     # one per guard (per host); thread-safe
    verdict = batcher.check(prompt)                  # from any thread
    verdict = await batcher.acheck(prompt)           # from any event loop
    batcher.close()                                  # or `with MicroBatcher(guard) as batcher:`

Its worker thread takes the first waiting check, gathers the checks that arrive within ``window_ms`` of it (at
most ``max_batch``) and judges them with one :meth:`~latent_guardrail.LatentGuard.check_batch` call, which pads
them into forward passes of ``guard.settings.batch_size``. Checks that queued while the host was busy are
older than the window already and go into the next batch at once, so under load batches form without waiting.

The verdicts are those of single checks (a batch pads prompts, so a score may differ from the unpadded one by
float noise, never the decision): a batch that raises — an invalid prompt, or the model failing under
``on_error="raise"`` — is served again one check at a time, so each caller gets exactly what ``guard.check``
would have given it (its own verdict or its own exception), never a neighbour's. A check whose caller gave up
(a cancelled ``acheck``) before its batch started is skipped.

There is no global state: each batcher has its own queue and worker. The worker starts with the first check and
stops after ``idle_s`` without work (a later check starts a new one), so a forgotten batcher holds no thread;
:meth:`MicroBatcher.close` stops it now, after serving every check already queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .guard import LatentGuard
from .positions import Prompt
from .verdict import Verdict

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_WINDOW_MS", "MaxBatch", "MicroBatchSettings", "MicroBatchStats",
           "MicroBatcher", "WindowMs"]


WindowMs = Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)]
"""A batch window in milliseconds (the bounds every setting of it shares)."""
MaxBatch = Annotated[int, Field(ge=1, le=4096)]
"""The most checks per batch."""
DEFAULT_WINDOW_MS = 2.0
DEFAULT_MAX_BATCH = 32


class MicroBatchSettings(BaseModel):
    """How a :class:`MicroBatcher` gathers checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_ms: WindowMs = Field(
        default=DEFAULT_WINDOW_MS,
        description="How long a batch waits, from its first check, for more checks (0 = batch only the checks "
                    "that queued while the host was busy).")
    max_batch: MaxBatch = Field(default=DEFAULT_MAX_BATCH, description="Most checks per check_batch call (1 = no "
                                                                       "batching).")
    idle_s: float = Field(default=10.0, gt=0.0, le=3600.0, allow_inf_nan=False,
                          description="The worker thread stops after this many seconds without checks.")


@dataclass(frozen=True)
class MicroBatchStats:
    """What a batcher has served so far: ``checks`` in ``batches`` ``check_batch`` calls, the ``largest`` batch."""

    checks: int
    batches: int
    largest: int


@dataclass
class _Request:
    prompt: Prompt
    future: Future[Verdict]
    arrived: float


class _Worker:
    """One worker thread and its stop flag (a closed batcher's old worker drains and ends on its own)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=batcher._run, args=(self,), daemon=True,
                                       name="latent-guard-microbatch")


class MicroBatcher:
    """Gathers concurrent checks of one guard into ``check_batch`` calls (see the module docstring).

    Args:
        guard: the guard that judges (every check of this batcher uses its settings).
        window_ms, max_batch, idle_s: :class:`MicroBatchSettings` fields.

    Raises:
        pydantic.ValidationError: a setting out of its bounds (the message names it).
    """

    def __init__(self, guard: LatentGuard, *, window_ms: float = 2.0, max_batch: int = 32,
                 idle_s: float = 10.0) -> None:
        if not isinstance(guard, LatentGuard):
            raise TypeError(f"MicroBatcher needs a LatentGuard, got {type(guard).__name__}")
        self.guard = guard
        self.settings = MicroBatchSettings(window_ms=window_ms, max_batch=max_batch, idle_s=idle_s)
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._worker: _Worker | None = None
        self._checks = 0
        self._batches = 0
        self._largest = 0

    # ------------------------------------------------------------------ public
    def submit(self, prompt: Prompt) -> Future[Verdict]:
        """Queue one check; the future holds its verdict (or the exception ``guard.check(prompt)`` raises)."""
        future: Future[Verdict] = Future()
        with self._cond:
            self._pending.append(_Request(prompt, future, time.monotonic()))
            if self._worker is None:
                self._worker = _Worker(self)
                self._worker.thread.start()
            self._cond.notify_all()
        return future

    def check(self, prompt: Prompt) -> Verdict:
        """:meth:`LatentGuard.check`, served together with the checks that arrive at the same time."""
        return self.submit(prompt).result()

    def check_many(self, prompts: Sequence[Prompt]) -> list[Verdict]:
        """Queue every prompt as a check of its own (they may share batches with other callers); input order."""
        futures = [self.submit(prompt) for prompt in prompts]
        return [future.result() for future in futures]

    async def acheck(self, prompt: Prompt) -> Verdict:
        """:meth:`check` without blocking the event loop; cancelling it drops the check if it has not started."""
        return await asyncio.wrap_future(self.submit(prompt))

    @property
    def pending(self) -> int:
        """Checks queued and not yet taken into a batch."""
        with self._cond:
            return len(self._pending)

    @property
    def stats(self) -> MicroBatchStats:
        """Checks and ``check_batch`` calls served so far."""
        with self._cond:
            return MicroBatchStats(checks=self._checks, batches=self._batches, largest=self._largest)

    def close(self) -> None:
        """Serve the checks already queued, then stop the worker thread. Idempotent; a later check starts a new
        worker."""
        with self._cond:
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.stopping = True
                self._cond.notify_all()
        if worker is not None and worker.thread is not threading.current_thread():
            worker.thread.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MicroBatcher({self.guard!r}, window_ms={self.settings.window_ms}, "
                f"max_batch={self.settings.max_batch})")

    # ------------------------------------------------------------------ worker
    def _run(self, worker: _Worker) -> None:
        while True:
            batch = self._next_batch(worker)
            if batch is None:
                return
            if batch:
                self._serve(batch)

    def _next_batch(self, worker: _Worker) -> list[_Request] | None:
        """The next batch to serve ([] when every taken check was cancelled), or None when the worker ends."""
        settings = self.settings
        with self._cond:
            idle_until = time.monotonic() + settings.idle_s
            while not self._pending:
                remaining = idle_until - time.monotonic()
                if worker.stopping or remaining <= 0:
                    if self._worker is worker:
                        self._worker = None
                    return None
                self._cond.wait(remaining)
            close_at = self._pending[0].arrived + settings.window_ms / 1000.0
            while not worker.stopping and len(self._pending) < settings.max_batch:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken = [self._pending.popleft() for _ in range(min(settings.max_batch, len(self._pending)))]
        return [request for request in taken if request.future.set_running_or_notify_cancel()]

    def _serve(self, batch: list[_Request]) -> None:
        """Judge ``batch`` with one ``check_batch``; if that raises, each check alone (its own outcome)."""
        try:
            verdicts = self.guard.check_batch([request.prompt for request in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._count(1)
                batch[0].future.set_exception(exc)
                return
            for request in batch:
                self._serve([request])
            return
        except BaseException as exc:  # e.g. KeyboardInterrupt in the worker: no caller may wait forever
            for request in batch:
                request.future.set_exception(exc)
            raise
        self._count(len(batch))
        for request, verdict in zip(batch, verdicts, strict=True):
            request.future.set_result(verdict)

    def _count(self, size: int) -> None:
        with self._cond:
            self._checks += size
            self._batches += 1
            self._largest = max(self._largest, size)
