"""Identity of a host as the guard sees it: model config, tokenizer, chat template, system prompt.

A guard fitted on one host is meaningless on another (its centroids live in that model's hidden
space), so artifacts store this fingerprint and loading checks it component by component.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from .placement import stored_tensor

__all__ = ["fingerprint_parts", "combine_fingerprint"]

_CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
                "rms_norm_eps", "tie_word_embeddings")


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint_parts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None,
                      chat_template: str | None = None) -> dict[str, str]:
    """Short hashes of each part of the host's identity (they are compared one by one on load).

    ``weights`` hashes a few rounded statistics of the input embeddings, so two fine-tunes with the
    same config differ while a float32 and a bfloat16 copy of one model agree.
    """
    config = getattr(model, "config", None)
    cfg = {key: getattr(config, key, None) for key in _CONFIG_KEYS} if config is not None else {}
    vocab = sorted(tokenizer.get_vocab().items())
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    embed = stored_tensor(model.get_input_embeddings(), "weight")  # type: ignore[operator]  # offloaded too
    probe = embed[: min(8, embed.shape[0])].detach().float().cpu()
    stats = [round(float(v), 2) for v in probe.norm(dim=-1)]
    return {
        "model": _digest(cfg),
        "tokenizer": _digest(vocab),
        "chat_template": _digest(template),
        "system_prompt": _digest(system_prompt),
        "weights": _digest(stats),
    }


def combine_fingerprint(parts: dict[str, str]) -> str:
    """One hex string for all parts."""
    return _digest(parts)
