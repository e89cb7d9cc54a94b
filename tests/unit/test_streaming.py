"""iterate_in_thread: items in order from a worker thread, errors re-raised, early exit closes the iterator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from latent_guardrail.streaming import iterate_in_thread


def test_items_arrive_in_order_from_one_worker_thread() -> None:
    threads: set[int] = set()

    def numbers(_cancel: threading.Event) -> Iterator[int]:
        for number in range(50):
            threads.add(threading.get_ident())
            yield number

    async def collect() -> list[int]:
        return [item async for item in iterate_in_thread(numbers)]

    assert asyncio.run(collect()) == list(range(50))
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_an_exception_in_the_worker_reaches_the_consumer() -> None:
    def failing(_cancel: threading.Event) -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    async def collect() -> list[int]:
        return [item async for item in iterate_in_thread(failing)]

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(collect())


def test_leaving_early_sets_cancel_and_closes_the_iterator_in_the_worker() -> None:
    closed = threading.Event()
    seen: list[threading.Event] = []

    def endless(cancel: threading.Event) -> Iterator[int]:
        seen.append(cancel)
        try:
            number = 0
            while True:
                yield number
                number += 1
        finally:
            closed.set()

    async def first_three() -> list[int]:
        out: list[int] = []
        async for item in iterate_in_thread(endless):
            out.append(item)
            if len(out) == 3:
                break
        return out

    assert asyncio.run(first_three()) == [0, 1, 2]
    assert closed.wait(10) and seen[0].is_set()
