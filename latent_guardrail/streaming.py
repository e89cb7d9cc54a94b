"""Consuming streams of events: to their result (:func:`drain`), or from asyncio through one worker thread.

A generation is a stream (a :class:`~latent_guardrail.guarded.GuardedEvent` or
:class:`~latent_guardrail.decoding.TextChunk` per step, a result last); who only wants the result drains it::

    result = drain(guarded_stream(guard, prompt, max_new_tokens=64), GuardedResult, "guarded generation")

Both framework adapters stream guarded generation to asyncio with :func:`iterate_in_thread` (the host lock is
taken and released in the worker)::

    async for chunk in iterate_in_thread(lambda cancel: chunks(guarded_stream(..., cancel=cancel))):
        ...

Leaving the ``async for`` early (or an exception, or the task being cancelled) sets ``cancel``; the worker stops
at its next item and closes the iterator (a generator's ``finally`` runs in the worker). Work that returns one
value runs with :func:`call_in_thread`, which sets ``cancel`` when the awaiting task stops waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["call_in_thread", "drain", "iterate_in_thread"]

T = TypeVar("T")
R = TypeVar("R")


def drain(events: Iterable[object], kind: type[R], what: str = "the stream") -> R:
    """Consume ``events`` to the end and return the last item that is a ``kind``.

    The iterator is closed on the way out (a generator's ``finally`` runs now, also when an item raises).

    Raises:
        RuntimeError: no item was a ``kind`` (``"<what> ended without a result"``).
    """
    final: R | None = None
    iterator = iter(events)
    try:
        for event in iterator:
            if isinstance(event, kind):
                final = event
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()
    if final is None:
        raise RuntimeError(f"{what} ended without a result")
    return final


async def call_in_thread(work: Callable[[threading.Event], T]) -> T:
    """``work(cancel)`` in a worker thread (``asyncio.to_thread``); its value or exception comes back here.

    ``cancel`` is set once the call returns or the awaiting task is cancelled: pass it on to work that can stop
    early (e.g. ``guarded_stream(cancel=...)``), so a cancelled request stops decoding at the next token.
    """
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(work, cancel)
    finally:
        cancel.set()


async def iterate_in_thread(start: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of ``start(cancel)``, produced in a worker thread; exceptions are re-raised here.

    ``start`` is called in the worker with the ``threading.Event`` that is set when the consumer stops listening;
    pass it on to work that can stop early (e.g. ``guarded_stream(cancel=...)``).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[T] | BaseException | None] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[T] | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            cancel.set()

    def work() -> None:
        try:
            items = start(cancel)
            try:
                for item in items:
                    if cancel.is_set():
                        break
                    put((item,))
            finally:
                close = getattr(items, "close", None)
                if callable(close):
                    close()
        except BaseException as exc:  # handed to the consumer
            put(exc)
        finally:
            put(None)

    worker = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item[0]
        await worker
    finally:
        cancel.set()
