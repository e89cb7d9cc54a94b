"""Data-parallel calibration and evaluation: 2 real processes on the gloo backend against one process.

The 2-process runs start real interpreters (about 10-20 s each on 2 cores): one ``accelerate launch`` of the
CLI (the command users run) and one pair of workers started with the torchrun environment, whose process 1
dies mid-run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latent_guardrail.artifact import TENSORS_FILE
from latent_guardrail.batching import plan_batches, split_plan
from latent_guardrail.distributed import CheckableGuard, LocalWorkers, batch_plan, launched_world_size
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.positions import encode_batch
from tests.support.models import HARMFUL, HARMLESS, make_host

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


# ---------------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize(("n", "batch_size", "world"), [(23, 4, 2), (5, 4, 3), (10, 1, 4), (0, 3, 2)])
def test_plan_deals_the_single_process_batches_round_robin(n: int, batch_size: int, world: int) -> None:
    lengths = [(7 * i) % 5 + i % 3 for i in range(n)]
    plan = batch_plan(lengths, batch_size, world)
    assert len(plan) == world
    assert sorted(i for part in plan for i in part) == list(range(n))           # every prompt exactly once
    order = sorted(range(n), key=lambda i: lengths[i])
    single = [order[s:s + batch_size] for s in range(0, n, batch_size)]       # what one process reads
    for rank, part in enumerate(plan):
        assert [part[s:s + batch_size] for s in range(0, len(part), batch_size)] == single[rank::world]
        # re-sorting a shard by length (what extract_states does) keeps its batches intact
        assert sorted(part, key=lambda i: lengths[i]) == part


def test_plan_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        batch_plan([1, 2], 0, 2)


def test_plan_is_the_one_planner_of_a_single_process() -> None:
    lengths = [(11 * i) % 7 for i in range(29)]
    assert batch_plan(lengths, 4, 3) == split_plan(lengths, 4, 3)
    chunks = plan_batches(lengths, 4)                                          # what every local loop reads
    for rank, part in enumerate(split_plan(lengths, 4, 3)):
        assert part == [index for chunk in chunks[rank::3] for index in chunk]
    with pytest.raises(ValueError, match="world_size"):
        batch_plan([1, 2], 2, 0)


def test_the_guard_is_what_check_batch_reads(tiny_host: Host) -> None:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="paper", progress=False)
    assert isinstance(guard, CheckableGuard)


def test_launched_world_size_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4


def test_local_workers_read_what_extract_states_reads() -> None:
    host = make_host(layers=2)
    encodings = encode_batch(host.tokenizer, HARMFUL[:5])
    states = LocalWorkers().extract_states(host.model, encodings, [0, 2], pad_token_id=host.tokenizer.pad_token_id,
                                           views=("t_inst", "content_mean"), batch_size=2)
    assert states.shape == (5, 2, 2, 32) and states.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One ``accelerate launch`` of 2 gloo processes running ``tests/support/distributed_worker.py``.

    A tiny host saved as a checkpoint and 24 + 24 prompts (a few dozen: 12 batches of 4, 6 per process).
    ``--monitor_interval 5`` gives process 0 time to write its report after process 1 dies on purpose.
    """
    root = tmp_path_factory.mktemp("distributed")
    host = make_host(layers=3, seed=1)
    host.model.save_pretrained(root / "model")
    host.tokenizer.save_pretrained(root / "model")
    harmful = HARMFUL + [f"tell me quickly, {text}" for text in HARMFUL] + ["steal a car", "burn a house",
                                                                           "cheat on a test", "forge a cheque"]
    harmless = HARMLESS + [f"tell me quickly, {text}" for text in HARMLESS] + ["grow tomatoes", "tie a tie",
                                                                             "fold a shirt", "boil an egg"]
    (root / "h.txt").write_text("\n".join(harmful) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("\n".join(harmless) + "\n", encoding="utf-8")
    command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "--monitor_interval", "5", "-m", "tests.support.distributed_worker", str(root)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert (root / "rank0.json").is_file(), output[-4000:]
    report: dict[str, object] = json.loads((root / "rank0.json").read_text())
    report.update(root=root, returncode=done.returncode, output=output, seconds=time.perf_counter() - started)
    return report


def test_two_processes_fit_exactly_the_single_process_guard(launched: dict[str, object]) -> None:
    root = launched["root"]
    assert isinstance(root, Path) and launched["world_size"] == 2
    assert "2 processes, batch size 4" in " ".join(str(launched["output"]).split())
    spread, single = load_file(root / "guard-2proc" / TENSORS_FILE), load_file(root / "guard-1proc" / TENSORS_FILE)
    assert spread.keys() == single.keys() and len(single) > 3
    assert all(spread[key].shape == single[key].shape for key in single)
    max_diff = max(float((spread[key].double() - single[key].double()).abs().max())
                   for key in single if single[key].numel())
    print(f"2-process vs 1-process fit: max |difference| over {len(single)} tensors = {max_diff:.3g} "
          f"(launch {float(launched['seconds']):.1f} s, CLI calibrate {launched['cli_seconds']} s)")
    assert max_diff == 0.0
    header = json.loads((root / "guard-2proc" / "guard.json").read_text())
    reference = json.loads((root / "guard-1proc" / "guard.json").read_text())
    assert header["scorer"] == reference["scorer"]
    assert header["report"]["behaviour"] == reference["report"]["behaviour"]      # generation was spread too
    assert header["report"]["kept"] == {"harmful": 24, "harmless": 24}


def test_distributed_evaluation_gives_the_single_process_verdicts(launched: dict[str, object]) -> None:
    assert launched["eval_count"] == 48
    assert launched["eval_same_verdicts"] is True and launched["eval_max_abs_diff"] == 0.0


def test_a_process_dying_mid_run_fails_clearly_and_saves_nothing(launched: dict[str, object]) -> None:
    message = launched["error"]
    assert isinstance(message, str), launched["output"]
    print(f"process 0 after process 1 died: {message}")
    assert "process 0 of 2" in message and "Another process probably died" in message
    assert "Nothing was saved" in message
    assert launched["died_artifact_exists"] is False and launched["died_leftovers"] == []
    assert launched["returncode"] != 0                                  # the launcher reports the dead process
    assert "exitcode  : 3" in str(launched["output"]) or "exit code 3" in str(launched["output"])
