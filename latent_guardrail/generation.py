"""Greedy generation of replies for a batch of encoded prompts (used to judge refusal).

This is the batched greedy path (``model.generate`` over left-padded batches), not the per-prompt loop of
:mod:`latent_guardrail.decoding`: on a padded batch that loop would not give the same tokens, and calibration's
replies (hence its behavioural selection and refusal direction) must stay token-identical. Batches come from the
package's one planner, :func:`latent_guardrail.batching.plan_batches`; the pad token is
:func:`latent_guardrail.decoding.pad_token_id`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import plan_batches
from .decoding import pad_token_id
from .layers import input_device
from .positions import PromptEncoding, pad_batch

__all__ = ["generate_replies"]


def generate_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     encodings: Sequence[PromptEncoding], *, max_new_tokens: int = 128, batch_size: int = 16,
                     progress: bool | str = False) -> list[str]:
    """Greedy replies (``max_new_tokens`` at most) for each prompt, in input order.

    Prompts are batched by length (:func:`~latent_guardrail.batching.plan_batches`) with left padding; each
    reply is decoded without special tokens and stripped. Callers hold ``Host.lock``.
    """
    pad_id = pad_token_id(tokenizer)
    device = input_device(model)
    chunks = plan_batches([len(encoding.input_ids) for encoding in encodings], batch_size)
    replies: list[str] = [""] * len(encodings)
    label = progress if isinstance(progress, str) else "generating replies"
    for chunk in tqdm(chunks, desc=label, disable=not progress, unit="batch"):
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
