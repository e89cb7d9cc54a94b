"""Greedy generation of replies for a batch of encoded prompts (used to judge refusal)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .layers import input_device
from .positions import PromptEncoding, pad_batch

__all__ = ["generate_replies"]


def generate_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     encodings: Sequence[PromptEncoding], *, max_new_tokens: int = 128, batch_size: int = 16,
                     progress: bool | str = False) -> list[str]:
    """Greedy replies (``max_new_tokens`` at most) for each prompt, in input order.

    Prompts are batched by length with left padding.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = input_device(model)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    replies: list[str] = [""] * len(encodings)
    label = progress if isinstance(progress, str) else "generating replies"
    for chunk in tqdm(chunks, desc=label, disable=not progress, unit="batch"):  # callers hold Host.lock
        batch = pad_batch([encodings[i] for i in chunk], pad_id, side="left")
        with torch.inference_mode():
            out = model.generate(  # type: ignore[operator]
                input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                 temperature=None, top_p=None, top_k=None)
        new = out[:, batch.input_ids.shape[1]:]
        for row, index in enumerate(chunk):
            replies[index] = str(tokenizer.decode(new[row], skip_special_tokens=True)).strip()
    return replies
