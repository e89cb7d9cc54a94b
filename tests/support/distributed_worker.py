"""One process of the 2-process gloo run of ``tests/unit/test_distributed.py`` (not a test itself).

Started by ``accelerate launch --multi_gpu --num_processes 2 -m tests.support.distributed_worker ROOT`` where
``ROOT`` holds a tiny host checkpoint (``model/``) and prompt files (``h.txt``, ``b.txt``). Three phases,
every process running the same code:

1. ``latent-guardrail calibrate`` (the CLI, in this process) with 2 processes; process 0 then fits the same
   guard alone with :class:`LocalWorkers` and saves it beside, for the test to compare;
2. distributed evaluation: ``DataParallel.check_batch`` against ``LatentGuard.check_batch`` in one process;
3. a calibration during which process 1 dies inside its forward pass: process 0 must fail with a
   :class:`DistributedError` and save nothing.

Process 0 writes what it saw to ``ROOT/rank0.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from latent_guardrail.artifact import save_fitted
from latent_guardrail.calibration import calibrate
from latent_guardrail.cli import app
from latent_guardrail.datasets import read_prompts
from latent_guardrail.distributed import DataParallel, DistributedError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import load_host
from latent_guardrail.layers import decoder_blocks
from latent_guardrail.settings import CalibrationSettings, GuardSettings


def _calibrate_with_the_cli(root: Path, workers: DataParallel, report: dict[str, object]) -> None:
    started = time.perf_counter()
    app(["calibrate", "--model", str(root / "model"), "--harmful", str(root / "h.txt"), "--harmless",
         str(root / "b.txt"), "--mode", "tuned", "--selection", "auto", "--max-new-tokens", "3", "--batch-size", "4",
         "-o", str(root / "guard-2proc")], standalone_mode=False)
    report["cli_seconds"] = round(time.perf_counter() - started, 2)
    if workers.is_main:  # the same fit in this one process, for the test to compare with the CLI's artifact
        host = load_host(root / "model")
        single = calibrate(host, read_prompts(root / "h.txt"), read_prompts(root / "b.txt"),
                           settings=CalibrationSettings(mode="tuned", selection="auto", max_new_tokens=3,
                                                        batch_size=4),
                           guard_settings=GuardSettings(batch_size=4), progress=False)
        save_fitted(single, root / "guard-1proc")
    workers.barrier("waiting for process 0's artifacts")


def _evaluate(host_dir: Path, workers: DataParallel, report: dict[str, object]) -> LatentGuard:
    host = load_host(host_dir)
    guard = LatentGuard.load(host_dir.parent / "guard-2proc", host)
    prompts = [row.text for row in read_prompts(host_dir.parent / "h.txt") + read_prompts(host_dir.parent / "b.txt")]
    spread = workers.check_batch(guard, prompts)
    local = guard.check_batch(prompts)
    report["eval_count"] = len(spread)
    report["eval_max_abs_diff"] = max(abs(a.score - b.score) for a, b in zip(spread, local, strict=True))
    report["eval_same_verdicts"] = [v.harmful for v in spread] == [v.harmful for v in local]
    return guard


def _die_mid_run(root: Path, guard: LatentGuard, workers: DataParallel, report: dict[str, object]) -> None:
    if workers.rank == 1:  # dies half-way through its first forward pass of the calibration below
        def die(*_args: object, **_kwargs: object) -> None:
            os._exit(3)
        decoder_blocks(guard.host.model)[1].register_forward_pre_hook(die)
    target = root / "guard-died"
    try:
        fitted = calibrate(guard.host, read_prompts(root / "h.txt"), read_prompts(root / "b.txt"),
                           settings=CalibrationSettings(mode="paper", batch_size=4), workers=workers, progress=False)
        save_fitted(fitted, target)
        report["error"] = None
    except DistributedError as exc:
        report["error"] = str(exc)
    report["died_artifact_exists"] = target.exists()
    report["died_leftovers"] = sorted(path.name for path in root.iterdir() if "died" in path.name)


def main(root: Path) -> None:
    """Run the three phases; process 0 records the outcome."""
    torch.set_num_threads(1)
    workers = DataParallel(timeout_s=300)
    report: dict[str, object] = {"world_size": workers.world_size}
    _calibrate_with_the_cli(root, workers, report)
    guard = _evaluate(root / "model", workers, report)
    _die_mid_run(root, guard, workers, report)
    if workers.is_main:
        (root / "rank0.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
