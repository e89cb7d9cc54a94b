"""Calibrate and evaluate a guard with several processes (data parallel), then save it once.

    accelerate launch --multi_gpu --num_processes 2 examples/distributed_calibration.py --out guard-dp/
    python examples/distributed_calibration.py --out guard-dp/          # the same, in one process

Every process runs this whole script: each reads a shard of the prompts on its own device (``cuda:<rank>``, or
the CPU with gloo), the states are gathered, and every process fits the same guard; process 0 saves it and
prints the evaluation. On a CPU-only machine ``--multi_gpu`` still starts the processes (gloo backend).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latent_guardrail import LatentGuard, load_host
from latent_guardrail.calibration import calibrate
from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.distributed import DataParallel
from latent_guardrail.settings import CalibrationSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default", help="host: 'default', an HF id or a local folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to save the guard to (process 0)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N prompts of each side")
    parser.add_argument("--mode", choices=("paper", "tuned"), default="tuned")
    args = parser.parse_args()

    workers = DataParallel()
    host = load_host(args.model, device=str(workers.device))
    harmful, harmless = read_calibration_sets()
    if args.limit is not None:
        harmful, harmless = harmful[: args.limit], harmless[: args.limit]
    held_out = [r.text for r in harmful[::5] + harmless[::5]]          # scored again below, spread too
    fitted = calibrate(host, harmful, harmless, settings=CalibrationSettings(mode=args.mode), workers=workers,
                       progress=workers.is_main)
    guard = LatentGuard(host, fitted)
    verdicts = workers.check_batch(guard, held_out)
    if workers.is_main:
        guard.save(args.out)
        flagged = sum(v.harmful for v in verdicts[: len(harmful[::5])])
        passed = sum(not v.harmful for v in verdicts[len(harmful[::5]):])
        print(f"{workers.world_size} process(es): {guard!r} saved to {args.out}")
        print(f"calibration prompts re-scored: {flagged}/{len(harmful[::5])} harmful flagged, "
              f"{passed}/{len(harmless[::5])} harmless passed")
    workers.close()


if __name__ == "__main__":
    main()
