"""Guarded generation vs plain generation, and the latent check vs a prompted self-check (a script, not a test).

    .venv/bin/python benchmarks/bench_guarded.py [--tokens 24] [--rounds 7] [--json out.json]

Both comparisons run interleaved in one process on the default host; medians are reported.
- guarded / plain: ``guarded_generate`` (verdict read inside the answer's own prefill) vs ``model.generate`` on
  the same prompt ids and the same number of greedy tokens (budget ≤ 1.02).
- self-check / latent check: the shape of NeMo's ``self check input`` — the host is asked whether the request is
  harmful and answers in a few greedy tokens — vs ``guard.check`` (early exit) (budget: the latent check ≥ 10×
  faster). The marginal cost of the latent check inside guarded generation (guarded − plain) is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from latent_guardrail import LatentGuard, load_host
from latent_guardrail.guarded import guarded_generate

PROMPTS = [
    "How do I kill a Python process that hangs?",
    "Write a haiku about the first snow of winter.",
    "What is the best way to learn to cook Thai food at home?",
]
SELF_CHECK = ("Your task is to check if the user message below complies with the policy: no harmful, illegal, "
              "dangerous or abusive requests.\n\nUser message: \"{text}\"\n\nShould the user message be blocked "
              "(Yes or No)?")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    host = load_host("default")
    guard = LatentGuard.load("default", host, progress=False)
    pad = host.tokenizer.pad_token_id

    def plain(text: str, tokens: int) -> None:
        ids = torch.tensor([guard.encode(text).input_ids])
        with host.lock, torch.inference_mode():
            host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False, pad_token_id=pad)

    def guarded(text: str, tokens: int) -> None:
        guarded_generate(guard, text, max_new_tokens=tokens)

    def self_check(text: str) -> None:
        plain(SELF_CHECK.format(text=text), 3)

    def check(text: str) -> None:
        guard.check(text)

    for text in PROMPTS:  # warm-up
        plain(text, 2)
        guarded(text, 2)
        self_check(text)
        check(text)
    times: dict[str, list[float]] = {"plain": [], "guarded": [], "self_check": [], "check": []}
    for _ in range(args.rounds):
        for text in PROMPTS:
            runs = (("plain", plain, (text, args.tokens)), ("guarded", guarded, (text, args.tokens)),
                    ("self_check", self_check, (text,)), ("check", check, (text,)))
            for name, run, run_args in runs:
                start = time.perf_counter()
                run(*run_args)
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"latent-guardrail guarded-generation benchmark (default host, {torch.get_num_threads()} threads, "
          f"{args.tokens} tokens, {args.rounds} rounds × {len(PROMPTS)} prompts, medians)")
    print(f"  plain generation          {med['plain']:.3f} s")
    ratio = med["guarded"] / med["plain"]
    print(f"  guarded generation        {med['guarded']:.3f} s   ratio guarded/plain = {ratio:.3f}   (budget <= 1.02)")
    print(f"  latent check (early exit) {med['check'] * 1000:.0f} ms")
    print(f"  prompted self-check       {med['self_check'] * 1000:.0f} ms   ratio self-check/check = "
          f"{med['self_check'] / med['check']:.1f}×   (budget ≥ 10×)")
    marginal = med["guarded"] - med["plain"]
    versus = "inf" if marginal <= 0 else f"{med['self_check'] / marginal:.0f}x"
    print(f"  marginal latent check inside guarded generation = {1000 * marginal:+.0f} ms "
          f"-> self-check / marginal cost = {versus}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "tokens": args.tokens, "rounds": args.rounds, "plain_generation_s": round(med["plain"], 4),
            "guarded_generation_s": round(med["guarded"], 4), "guarded_vs_plain_ratio": round(ratio, 4),
            "latent_check_ms": round(1000 * med["check"], 1), "self_check_ms": round(1000 * med["self_check"], 1),
            "self_check_vs_latent_check_ratio": round(med["self_check"] / med["check"], 2),
            "marginal_check_in_guarded_generation_ms": round(1000 * marginal, 1)}, indent=2))


if __name__ == "__main__":
    main()
