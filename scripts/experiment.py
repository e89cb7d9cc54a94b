"""Scratch: cache states (t_inst, content_mean, t_post_inst; all layers) of the eval and calibration sets."""
import time
from pathlib import Path

import torch

from latent_guardrail.activations import extract_states
from latent_guardrail.datasets import read_calibration_sets, read_prompts
from latent_guardrail.hosts import load_host
from latent_guardrail.positions import encode_batch

D = Path("../shared/data")
host = load_host("default")
x = read_prompts(D / "xstest/xstest_prompts.csv")
h, b = read_calibration_sets()
sets = {
    "advbench": [r.text for r in read_prompts(D / "advbench/harmful_behaviors.csv")],
    "alpaca": [r.text for r in read_prompts(D / "alpaca/alpaca_noinput_sample2000.jsonl")][:600],
    "xs_safe": [r.text for r in x if r.label == "harmless"],
    "xs_unsafe": [r.text for r in x if r.label == "harmful"],
    "cal_h": [r.text for r in h],
    "cal_b": [r.text for r in b],
}
out = {"cal_h_cat": [r.category for r in h], "cal_b_kind": [r.meta.get("kind") for r in b],
       "xs_type": [r.category for r in x]}
for name, prompts in sets.items():
    t = time.time()
    enc = encode_batch(host.tokenizer, prompts)
    st = extract_states(host.model, enc, list(range(31)), pad_token_id=host.tokenizer.pad_token_id,
                        which=("t_inst", "content_mean", "t_post_inst"), batch_size=16)
    out[name] = st.half()
    print(name, len(prompts), tuple(st.shape), f"{time.time() - t:.1f}s", flush=True)
torch.save(out, "/tmp/states2.pt")
