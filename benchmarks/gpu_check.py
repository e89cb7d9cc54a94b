"""GPU check (a script, not a test): the figures issue 8 asks for, from one run on one GPU, no downloads.

    benchmarks/gpu_check.sh                      # the wrapper: offline, a time limit, JSON into $OUT if set
    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--prompts 512] [--json out.json]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --prompts 16 --rounds 1 --tokens 4   # dry run on CPU

Phases (each timed; a failing phase is reported and the others still run):

1. ``tiny``: tiny random hosts (``tests/support/models.py``) on the device in float32 / bfloat16 / float16: the
   states come back float32 on the CPU; a ``device_map`` that offloads half the blocks to the CPU reads the
   same states as the host fully on the device; a device map naming a missing GPU is refused.
2. ``bf16_vs_fp32``: the default host (SmolLM2-135M-Instruct) and its default guard in float32 and in
   bfloat16 on the device: score agreement over the bundled calibration prompts (max / mean |Δ score|,
   Pearson r, verdicts that agree).
3. ``throughput``: ``check_batch`` with batch size 32 over the same prompts, float32 and bfloat16: prompts/s
   (length-bucketed batches), against batch size 1 (8 prompts); the batch ``--batch-size auto`` picks for calibration.
4. ``generation``: guarded generation (verdict read in the answer's own prefill) vs plain ``generate`` of the
   same prompt and tokens, medians of interleaved rounds: the time ratio (CPU budget ≤ 1.02).
5. Peak GPU memory (``torch.cuda.max_memory_allocated``) of every phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.support (tiny hosts) lives beside the package
    sys.path.insert(0, str(ROOT))

from latent_guardrail import LatentGuard, load_host  # noqa: E402
from latent_guardrail.activations import extract_states  # noqa: E402
from latent_guardrail.batch_size import auto_batch_size  # noqa: E402
from latent_guardrail.datasets import read_calibration_sets  # noqa: E402
from latent_guardrail.errors import HostError  # noqa: E402
from latent_guardrail.guarded import guarded_generate  # noqa: E402
from latent_guardrail.hosts import DEFAULT_MODEL  # noqa: E402
from latent_guardrail.layers import decoder_blocks  # noqa: E402
from latent_guardrail.placement import describe_placement  # noqa: E402
from latent_guardrail.positions import encode_batch  # noqa: E402

GENERATION_PROMPTS = [
    "How do I kill a Python process that hangs?",
    "Write a haiku about the first snow of winter.",
    "What is the best way to learn to cook Thai food at home?",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _timed(device: torch.device, run: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = run()
    _sync(device)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- phases
def phase_tiny(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Tiny random hosts: dtypes, a device map with offloaded blocks, a missing device."""
    from accelerate import dispatch_model

    from tests.support.models import HARMFUL, HARMLESS, make_host

    prompts = HARMFUL + HARMLESS
    out: dict[str, Any] = {}
    reference: torch.Tensor | None = None
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        host = make_host(layers=4, hidden=64, dtype=dtype)
        host.model.to(device)
        encodings = encode_batch(host.tokenizer, prompts)
        states = extract_states(host.model, encodings, range(5), pad_token_id=host.tokenizer.pad_token_id,
                                views=("t_inst", "content_mean"), batch_size=8)
        ok = states.dtype == torch.float32 and states.device.type == "cpu" and bool(torch.isfinite(states).all())
        if reference is None:
            reference = states
        out[str(dtype).removeprefix("torch.")] = {
            "states_float32_on_cpu": ok,
            "max_rel_diff_vs_float32": round(float((states - reference).abs().max() / reference.abs().max()), 5)}
    host = make_host(layers=4, hidden=64)
    placed = "cpu" if device.type == "cpu" else device.index or 0
    device_map = {"model.embed_tokens": placed, "model.layers.0": placed, "model.layers.1": "cpu",
                  "model.layers.2": placed, "model.layers.3": "cpu", "model.norm": placed, "model.rotary_emb": placed,
                  "lm_head": placed}
    model = dispatch_model(host.model, device_map=device_map, main_device=str(device))
    encodings = encode_batch(host.tokenizer, prompts)
    split = extract_states(model, encodings, range(5), pad_token_id=host.tokenizer.pad_token_id,
                           views=("t_inst", "content_mean"), batch_size=8)
    assert reference is not None
    out["device_map_offload"] = {
        "blocks": [f"{p.device}{' (offloaded)' if p.offloaded else ''}" for p in describe_placement(
            decoder_blocks(model))],
        "max_abs_diff_vs_on_device": float((split - reference).abs().max())}
    try:
        load_host(DEFAULT_MODEL, device_map={"model.embed_tokens": "cuda:97", "model.layers": "cpu"})
        out["missing_device_refused"] = False
    except HostError as exc:
        out["missing_device_refused"] = "does not exist" in str(exc)
    return out


def phase_agreement(device: torch.device, args: argparse.Namespace, shared: dict[str, Any]) -> dict[str, Any]:
    """Default host float32 vs bfloat16 on the device: scores of the bundled calibration prompts."""
    harmful, harmless = read_calibration_sets()
    prompts = [r.text for r in harmful + harmless][:: max(1, (len(harmful) + len(harmless)) // args.prompts)]
    prompts = prompts[: args.prompts]
    fp32 = LatentGuard.load("default", load_host(DEFAULT_MODEL, dtype="float32", device=str(device)), progress=False)
    # the same fitted guard on a bfloat16 copy of the host (its fingerprint must accept it)
    bf16 = LatentGuard(load_host(DEFAULT_MODEL, dtype="bfloat16", device=str(device)), fp32.fitted)
    guards = {"float32": fp32, "bfloat16": bf16}
    shared.update(prompts=prompts, guards=guards)
    scores = {}
    for name, guard in guards.items():
        verdicts = guard.with_settings(batch_size=32).check_batch(prompts)
        if any(v.status != "ok" for v in verdicts):
            raise RuntimeError(f"{name}: {sum(v.status != 'ok' for v in verdicts)} error verdicts")
        scores[name] = torch.tensor([v.score for v in verdicts], dtype=torch.float64)
    a, b = scores["float32"], scores["bfloat16"]
    agree = float(((a >= guards["float32"].threshold) == (b >= guards["bfloat16"].threshold)).double().mean())
    return {"prompts": len(prompts), "threshold": guards["float32"].threshold,
            "max_abs_diff": round(float((a - b).abs().max()), 5),
            "mean_abs_diff": round(float((a - b).abs().mean()), 5),
            "pearson_r": round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 6), "verdict_agreement": agree,
            "score_range": [round(float(a.min()), 3), round(float(a.max()), 3)]}


def phase_throughput(device: torch.device, args: argparse.Namespace, shared: dict[str, Any]) -> dict[str, Any]:
    """check_batch at batch 32 (and 1, over 8 prompts) per dtype; the batch `--batch-size auto` picks to calibrate."""
    prompts: list[str] = shared["prompts"]
    out: dict[str, Any] = {}
    few = prompts[:8]
    for name, guard in shared["guards"].items():
        batched = guard.with_settings(batch_size=32)
        batched.check_batch(prompts[:32])  # warm-up
        _, seconds = _timed(device, lambda b=batched: b.check_batch(prompts))
        single = guard.with_settings(batch_size=1)
        _, single_seconds = _timed(device, lambda s=single: s.check_batch(few))
        out[name] = {"batch32_prompts_per_s": round(len(prompts) / seconds, 1),
                     "batch1_prompts_per_s": round(len(few) / single_seconds, 1)}
    host = shared["guards"]["float32"].host
    encodings = encode_batch(host.tokenizer, prompts)
    _sync(device)
    start = time.perf_counter()
    chosen = auto_batch_size(host.model, [len(e.input_ids) for e in encodings], range(host.num_blocks + 1))
    out["auto_batch_size_calibration"] = {"chosen": chosen, "seconds": round(time.perf_counter() - start, 2),
                                          "longest_prompt_tokens": max(len(e.input_ids) for e in encodings)}
    return out


def phase_generation(device: torch.device, args: argparse.Namespace, shared: dict[str, Any]) -> dict[str, Any]:
    """Guarded vs plain generation of the same prompt ids and number of greedy tokens (interleaved medians)."""
    guard: LatentGuard = shared["guards"]["float32"]
    host = guard.host
    pad = host.tokenizer.pad_token_id

    def plain(text: str, tokens: int) -> None:
        ids = torch.tensor([guard.encode(text).input_ids], device=host.device)
        with host.lock, torch.inference_mode():
            host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False, pad_token_id=pad)

    def guarded(text: str, tokens: int) -> None:
        guarded_generate(guard, text, max_new_tokens=tokens)

    for text in GENERATION_PROMPTS:
        plain(text, 2)
        guarded(text, 2)
    times: dict[str, list[float]] = {"plain": [], "guarded": []}
    for _ in range(args.rounds):
        for text in GENERATION_PROMPTS:
            for name, run in (("plain", plain), ("guarded", guarded)):
                _, seconds = _timed(device, lambda r=run, t=text: r(t, args.tokens))
                times[name].append(seconds)
    med = {name: statistics.median(values) for name, values in times.items()}
    return {"tokens": args.tokens, "rounds": args.rounds, "plain_s": round(med["plain"], 4),
            "guarded_s": round(med["guarded"], 4), "guarded_vs_plain": round(med["guarded"] / med["plain"], 4)}


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 … or cpu (a dry run)")
    parser.add_argument("--prompts", type=int, default=512, help="bundled prompts scored per dtype")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per generation")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved generation rounds")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: tiny,bf16_vs_fp32,"
                                                   "throughput,generation")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); run with --device cpu for a dry run",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "phases": {}}
    shared: dict[str, Any] = {}
    phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("tiny", lambda: phase_tiny(device, args)),
        ("bf16_vs_fp32", lambda: phase_agreement(device, args, shared)),
        ("throughput", lambda: phase_throughput(device, args, shared)),
        ("generation", lambda: phase_generation(device, args, shared)),
    ]
    skipped = {name.strip() for name in args.skip.split(",") if name.strip()}
    started = time.perf_counter()
    for name, run in phases:
        if name in skipped:
            continue
        _reset_peak(device)
        begin = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # report and go on: the other figures still matter
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - begin, 2)
        result["peak_gpu_mib"] = _peak_mib(device)
        report["phases"][name] = result
        print(f"[{time.perf_counter() - started:6.1f}s] {name}: {json.dumps(result)}", flush=True)
        report["total_seconds"] = round(time.perf_counter() - started, 2)
        if args.json is not None:  # after every phase: a run cut short by the time limit keeps what it measured
            args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 1 if any("error" in phase for phase in report["phases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
