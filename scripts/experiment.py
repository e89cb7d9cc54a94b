"""Scratch experiment: cache t_inst states of all eval sets on the default host (not shipped logic)."""
import sys, time, torch
from pathlib import Path
from latent_guardrail.hosts import load_host
from latent_guardrail.datasets import read_prompts, read_calibration_sets
from latent_guardrail.positions import encode_batch
from latent_guardrail.activations import extract_states

D = Path("../shared/data")
host = load_host("default")
sets = {
    "advbench": [r.text for r in read_prompts(D/"advbench/harmful_behaviors.csv")],
    "alpaca": [r.text for r in read_prompts(D/"alpaca/alpaca_noinput_sample2000.jsonl")][:600],
}
x = read_prompts(D/"xstest/xstest_prompts.csv")
sets["xs_safe"] = [r.text for r in x if r.label == "harmless"]
sets["xs_unsafe"] = [r.text for r in x if r.label == "harmful"]
h, b = read_calibration_sets()
sets["cal_h"] = [r.text for r in h]; sets["cal_b"] = [r.text for r in b]
out = {}
for name, prompts in sets.items():
    t = time.time()
    enc = encode_batch(host.tokenizer, prompts)
    st = extract_states(host.model, enc, list(range(31)), pad_token_id=host.tokenizer.pad_token_id, which=("t_inst","t_post_inst"), batch_size=16)
    out[name] = st.half()
    print(name, len(prompts), st.shape, f"{time.time()-t:.1f}s", flush=True)
out["cal_h_cat"] = [r.category for r in h]
out["cal_b_kind"] = [r.meta.get("kind") for r in b]
torch.save(out, "/tmp/states.pt")
