"""The one batch planner: which prompts share a forward pass, in which order.

Every loop over prompts (state extraction, reply generation, distributed workers, the evaluation
baselines) cuts its batches here, so two loops over the same prompts always pad the same way — and
:class:`~latent_guardrail.distributed.DataParallel` reads exactly the batches one process would.

Prompts are sorted by token count (a stable sort, so ties keep their input order) and cut into runs of
``batch_size``: each batch pads only to its own longest prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_batches", "split_plan"]


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in each batch, batches in the order they are run.

    Args:
        lengths: token count of each prompt (``len(encoding.input_ids)``).
        batch_size: prompts per batch (the last batch may hold fewer).

    Returns:
        A list of batches, each a list of indices into ``lengths``; every index occurs exactly once.

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def split_plan(lengths: Sequence[int], batch_size: int, world_size: int) -> list[list[int]]:
    """The batches of :func:`plan_batches` dealt round-robin to ``world_size`` processes.

    Batch ``b`` goes to process ``b % world_size``. Returns one list of indices per process (possibly
    empty), in the order that process reads them.

    Raises:
        ValueError: ``batch_size`` or ``world_size`` below 1.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    chunks = plan_batches(lengths, batch_size)
    return [[index for chunk in chunks[rank::world_size] for index in chunk] for rank in range(world_size)]
