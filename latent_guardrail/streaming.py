"""Consume a blocking iterator from asyncio: the iteration runs in one worker thread, items come back in order.

Both framework adapters stream guarded generation this way (the host lock is taken and released in the worker)::

    async for chunk in iterate_in_thread(lambda cancel: chunks(guarded_stream(..., cancel=cancel))):
        ...

Leaving the ``async for`` early (or an exception, or the task being cancelled) sets ``cancel``; the worker stops
at its next item and closes the iterator (a generator's ``finally`` runs in the worker).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

__all__ = ["iterate_in_thread"]

T = TypeVar("T")


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
