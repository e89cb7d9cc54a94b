"""Micro-batched checks: throughput at 16 concurrent clients vs one client, on the default host (not a test).

    .venv/bin/python benchmarks/bench_microbatch.py [--prompts 64] [--clients 16] [--rounds 2] [--nemo] [--json out]

Measured side by side in one run (the rounds alternate sequential and concurrent, so a load change on the machine
hits both; every prompt is checked once, untimed, before the rounds start: a first pass over a new sequence length
is slower):

- ``sequential``: one client, ``guard.check`` one prompt after the other (no batcher: the plain rate);
- ``concurrent``: ``--clients`` threads share the prompts, each calling ``MicroBatcher.check`` (one batcher on the
  guard, the NeMo rail's default window); the batcher judges the checks that arrive together in one
  ``check_batch``.

Printed: checks/s of each, their ratio (target >= 1.5 at 16 clients; ``concurrent_vs_sequential`` compares the
fastest round of each path, ``..._all_rounds`` the totals), the mean batch size, and whether every
verdict equals its sequential one (decision, category, status; the largest score difference from batch padding).
With ``--nemo`` the same comparison runs through a real NeMo ``LLMRails`` app with the latent rail in
``mode: check`` on prompts it blocks (pure check work; requests from concurrent asyncio tasks, as the server runs
them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from report import print_results  # benchmarks/report.py (scripts run from this folder)

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.microbatch import MicroBatcher
from latent_guardrail.verdict import Verdict


def _prompts(count: int) -> list[str]:
    harmful, harmless = read_calibration_sets()
    mixed = [r.text for pair in zip(harmful[1::7], harmless[1::7], strict=False) for r in pair]
    return mixed[:count]


def _concurrently(clients: int, count: int, serve: Callable[[int], Any]) -> list[Any]:
    """``serve(i)`` for i in range(count), shared by ``clients`` threads (client c takes i = c, c + clients, ...)."""
    out: list[Any] = [None] * count
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        start.wait()
        for i in range(c, count, clients):
            out[i] = serve(i)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def _compare(sequential: list[Verdict], concurrent: list[Verdict]) -> tuple[int, float]:
    """Verdicts whose decision, category or status differ; the largest score difference."""
    mismatches = sum((a.harmful, a.category, a.status) != (b.harmful, b.category, b.status)
                     for a, b in zip(sequential, concurrent, strict=True))
    drift = max(abs(a.score - b.score) for a, b in zip(sequential, concurrent, strict=True))
    return mismatches, drift


def bench_guard(guard: LatentGuard, prompts: list[str], clients: int, rounds: int) -> dict[str, Any]:
    seq_times: list[float] = []
    conc_times: list[float] = []
    mismatches, drift = 0, 0.0
    batcher = MicroBatcher(guard)
    for _ in range(rounds):
        start = time.perf_counter()
        sequential = [guard.check(prompt) for prompt in prompts]
        seq_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        concurrent = _concurrently(clients, len(prompts), lambda i: batcher.check(prompts[i]))
        conc_times.append(time.perf_counter() - start)
        bad, worst = _compare(sequential, concurrent)
        mismatches, drift = mismatches + bad, max(drift, worst)
    stats = batcher.stats
    batcher.close()
    n, seq_s, conc_s = rounds * len(prompts), sum(seq_times), sum(conc_times)
    return {
        "checks_per_round": len(prompts), "rounds": rounds, "clients": clients,
        "sequential_round_s": [round(t, 2) for t in seq_times], "concurrent_round_s": [round(t, 2) for t in conc_times],
        "sequential_checks_per_s": round(n / seq_s, 2), "concurrent_checks_per_s": round(n / conc_s, 2),
        "concurrent_vs_sequential_all_rounds": round(seq_s / conc_s, 2),
        # the headline: fastest round of each path (a stall from another job on the machine hits one round)
        "concurrent_vs_sequential": round(min(seq_times) / min(conc_times), 2),
        "mean_batch": round(stats.checks / stats.batches, 1), "largest_batch": stats.largest,
        "verdict_mismatches": mismatches, "largest_score_difference": float(f"{drift:.2e}"),
    }


def bench_nemo(guard: LatentGuard, prompts: list[str], clients: int, rounds: int) -> dict[str, Any]:
    import json

    from nemoguardrails import LLMRails, RailsConfig
    from nemoguardrails.testing import FakeLLMModel

    from latent_guardrail.integrations.nemo import rail_path, register

    texts = [p for p, v in zip(prompts, guard.check_batch(prompts), strict=True) if v.harmful]
    yaml = "\n".join([f"import_paths: [{json.dumps(rail_path())}]",
                      "rails: {input: {flows: [latent guard check input]}}",
                      "custom_data: {latent_guard: {guard: null, mode: check}}"]) + "\n"
    app = LLMRails(RailsConfig.from_content(yaml_content=yaml), llm=FakeLLMModel(responses=["unused"] * 10_000))
    rail = register(app, guard)
    assert rail is not None
    options = {"log": {"activated_rails": True}}

    async def ask(text: str) -> bool:
        response = await app.generate_async(messages=[{"role": "user", "content": text}], options=options)
        outcome = response.log.activated_rails[0].executed_actions[0].return_value
        return bool(outcome.is_blocked)

    async def sequential() -> list[bool]:
        return [await ask(text) for text in texts]

    async def concurrent() -> list[bool]:
        gate = asyncio.Semaphore(clients)  # at most `clients` requests in flight, as from that many clients

        async def one(text: str) -> bool:
            async with gate:
                return await ask(text)

        return list(await asyncio.gather(*(one(text) for text in texts)))

    asyncio.run(ask(texts[0]))  # warm-up (NeMo compiles its flows on the first request)
    seq_s = conc_s = 0.0
    all_blocked = True
    for _ in range(rounds):
        start = time.perf_counter()
        all_blocked &= all(asyncio.run(sequential()))
        seq_s += time.perf_counter() - start
        start = time.perf_counter()
        all_blocked &= all(asyncio.run(concurrent()))
        conc_s += time.perf_counter() - start
    stats = rail.batcher.stats
    rail.close()
    n = rounds * len(texts)
    return {
        "nemo_blocked_requests_per_round": len(texts),
        "nemo_sequential_requests_per_s": round(n / seq_s, 2), "nemo_concurrent_requests_per_s": round(n / conc_s, 2),
        "nemo_concurrent_vs_sequential": round(seq_s / conc_s, 2),
        "nemo_mean_batch": round(stats.checks / stats.batches, 1), "nemo_all_blocked": all_blocked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="checks per round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="sequential/concurrent rounds, alternating")
    parser.add_argument("--nemo", action="store_true", help="also through a NeMo LLMRails app (mode: check)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    guard = LatentGuard.load("default", progress=False)
    prompts = _prompts(args.prompts)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs on the machine skew timings
    for prompt in prompts:  # warm-up, untimed: the first pass over each new sequence length is slower
        guard.check(prompt)
    guard.check_batch(prompts)
    results: dict[str, Any] = {"load_average_at_start": None if load is None else round(load, 1)}
    results.update(bench_guard(guard, prompts, args.clients, args.rounds))
    if args.nemo:
        results.update(bench_nemo(guard, prompts, args.clients, args.rounds))
    print_results(f"latent-guardrail micro-batching benchmark (default host, {torch.get_num_threads()} threads, "
                  f"{args.clients} clients vs 1)", results, args.json)


if __name__ == "__main__":
    main()
