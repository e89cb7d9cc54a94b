"""Guarded generation with the output check vs plain generation, side by side (a script, not a test).

    .venv/bin/python benchmarks/bench_output.py [--tokens 32] [--rounds 5] [--guard default] [--json out.json]

Three runs per prompt, interleaved in one process on the default host, medians reported:
- plain: ``model.generate`` on the same prompt ids, the same number of greedy tokens;
- guarded: ``guarded_generate`` (the input verdict read in the answer's own prefill);
- guarded + output check: ``guarded_generate(check_output=True)`` — hooks on the response scorer's layers record
  each decoding step's newest state and the scorer reads it at every check point (no extra pass). The response
  threshold is set out of reach so every run generates the same tokens (the cost measured is the checking, not
  an early stop). Budget: guarded + output check / plain ≤ 1.03.
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
    "Write a short story about a lighthouse keeper and a storm.",
    "Explain how vaccines train the immune system.",
    "Give me a plan for a week of healthy dinners.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--guard", default="default", help="a guard with a response part (default: the shipped one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    host = load_host("default")
    base = LatentGuard.load(args.guard, host, progress=False)
    if base.response is None:
        raise SystemExit(f"{args.guard}: the guard has no response part (latent-guardrail add-response GUARD_DIR)")
    guard = base.with_settings(response_threshold=1e9, threshold=1e9)  # nothing is stopped: same tokens every run
    pad = host.tokenizer.pad_token_id
    lengths: dict[str, list[int]] = {"guarded": [], "checked": []}

    def plain(text: str, tokens: int) -> None:
        ids = torch.tensor([guard.encode(text, normalize=False).input_ids])
        with host.lock, torch.inference_mode():
            host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                min_new_tokens=tokens, do_sample=False, pad_token_id=pad)

    def guarded(text: str, tokens: int) -> None:
        lengths["guarded"].append(len(guarded_generate(guard, text, max_new_tokens=tokens).tokens))

    def checked(text: str, tokens: int) -> None:
        result = guarded_generate(guard, text, max_new_tokens=tokens, check_output=True)
        assert result.output_verdict is not None
        lengths["checked"].append(len(result.tokens))

    for text in PROMPTS:  # warm-up
        plain(text, 2)
        guarded(text, 2)
        checked(text, 2)
    lengths = {"guarded": [], "checked": []}
    times: dict[str, list[float]] = {"plain": [], "guarded": [], "checked": []}
    for _ in range(args.rounds):
        for text in PROMPTS:
            for name, run in (("plain", plain), ("guarded", guarded), ("checked", checked)):
                start = time.perf_counter()
                run(text, args.tokens)
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    ratio = med["checked"] / med["plain"]
    print(f"latent-guardrail output-check benchmark (default host, {torch.get_num_threads()} threads, up to "
          f"{args.tokens} tokens, {args.rounds} rounds × {len(PROMPTS)} prompts, medians; response view "
          f"{base.response.view}, check every {base.response.every} tokens, layers {list(base.response.layers)})")
    print(f"  plain generation                  {med['plain']:.3f} s")
    print(f"  guarded generation                {med['guarded']:.3f} s   ratio guarded/plain = "
          f"{med['guarded'] / med['plain']:.3f}")
    print(f"  guarded + output check            {med['checked']:.3f} s   ratio checked/plain = {ratio:.3f}   "
          f"(budget <= 1.03);  checked/guarded = {med['checked'] / med['guarded']:.3f}")
    print(f"  tokens generated: guarded {statistics.mean(lengths['guarded']):.1f}, "
          f"checked {statistics.mean(lengths['checked']):.1f} (plain {args.tokens})")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "tokens": args.tokens, "rounds": args.rounds, "plain_generation_s": round(med["plain"], 4),
            "guarded_generation_s": round(med["guarded"], 4), "checked_generation_s": round(med["checked"], 4),
            "checked_vs_plain_ratio": round(ratio, 4), "checked_vs_guarded_ratio": round(
                med["checked"] / med["guarded"], 4), "guarded_vs_plain_ratio": round(med["guarded"] / med["plain"], 4),
            "view": base.response.view, "every": base.response.every}, indent=2))


if __name__ == "__main__":
    main()
