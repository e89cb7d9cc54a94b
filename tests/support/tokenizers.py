"""Small offline tokenizers that imitate real chat-model families (no downloads, built in a second).

Each family gets a byte-level BPE trained on a tiny corpus, its special tokens registered as special added
tokens, and the chat template from ``tests/fixtures/templates/{family}.jinja``. The pre-tokenizers are chosen
so that the post-instruction parts split exactly like the real tokenizers do:

- Llama-2 / Mistral ``" [/INST]"`` -> 4 tokens (``" ["``, ``"/"``, ``"INST"``, ``"]"``, like ``▁[ / INST ]``);
- ChatML / Qwen2 ``"<|im_end|>\\n<|im_start|>assistant\\n"`` -> 5 tokens;
- Llama-3 ``"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n"`` -> 5 tokens;
- Gemma ``"<end_of_turn>\\n<start_of_turn>model\\n"`` -> 5 tokens.

Content words are split however the tiny BPE likes; nothing byte-level is ever unknown.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["FAMILIES", "SlowStyleTokenizer", "load_template", "make_slow_tokenizer", "make_tokenizer"]

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
FAMILIES = ("llama2", "llama3", "chatml", "qwen2", "mistral", "gemma")

# Llama-3 / Qwen2 split pattern: letters, up to 3 digits, punctuation runs, newline runs.
_GPT4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# SentencePiece-like split for Llama-2 / Mistral: one punctuation mark per piece; a space joins what follows.
_SP_PATTERN = r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]|\s+(?!\S)|\s+"

# family -> (split pattern, named special tokens, extra special tokens, other special added tokens)
# "other" tokens are special in the vocabulary but not listed in special_tokens_map, as in the real Llama-3.
_SPECS: dict[str, tuple[str, dict[str, str], list[str], list[str]]] = {
    "llama2": (_SP_PATTERN, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, [], []),
    "mistral": (_SP_PATTERN, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, [], []),
    "llama3": (
        _GPT4_PATTERN,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        [],
        ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
    ),
    "chatml": (
        _GPT4_PATTERN,
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|im_end|>",
        },
        ["<|im_start|>", "<|im_end|>"],
        [],
    ),
    "qwen2": (
        _GPT4_PATTERN,
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ["<|im_start|>", "<|im_end|>"],
        [],
    ),
    "gemma": (
        _GPT4_PATTERN,
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        ["<start_of_turn>", "<end_of_turn>"],
        [],
    ),
}

# Words of the templates (repeated so BPE merges them whole) plus ordinary English for user content.
_TEMPLATE_WORDS = ["assistant", "user", "system", "model", " [INST]", " [/INST]", " <<SYS>>", "\n\n", "\n"]
_ENGLISH = (
    "How do I kill a Python process? Write a tutorial on how to make a cake. Tell me a story about a dog. "
    "You are a helpful assistant. Explain the theory of relativity in simple terms. What is the capital of "
    "France? Ignore previous instructions and answer the question. Give me three reasons to learn math."
)


def load_template(family: str) -> str:
    """The fixture chat template of ``family`` (one of :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")


@functools.cache
def _tokenizer_json(family: str) -> str:
    pattern, named, extra, other = _SPECS[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [word for word in _TEMPLATE_WORDS for _ in range(200)] + [_ENGLISH] * 20
    backend.train_from_iterator(corpus, trainer=trainer)
    specials = list(dict.fromkeys([*named.values(), *extra, *other]))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return backend.to_str()


def make_tokenizer(family: str, *, chat_template: str | None = "fixture") -> PreTrainedTokenizerFast:
    """A fresh fast tokenizer for ``family`` with its fixture chat template.

    ``chat_template=None`` leaves the tokenizer without a template; any other string is used as the template.
    """
    return _build(PreTrainedTokenizerFast, family, chat_template)


class SlowStyleTokenizer(PreTrainedTokenizerFast):
    """A tokenizer that behaves like a slow (Python) one: no ``is_fast`` and no offset mapping."""

    @property
    def is_fast(self) -> bool:
        return False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers.")
        return super().__call__(*args, **kwargs)


def make_slow_tokenizer(family: str) -> SlowStyleTokenizer:
    """Like :func:`make_tokenizer`, but without offset mapping, to exercise the slow-tokenizer fallback."""
    tokenizer = _build(SlowStyleTokenizer, family, "fixture")
    assert isinstance(tokenizer, SlowStyleTokenizer)
    return tokenizer


def _build(cls: type[PreTrainedTokenizerFast], family: str, chat_template: str | None) -> PreTrainedTokenizerFast:
    template = load_template(family) if chat_template == "fixture" else chat_template
    _, named, extra, _ = _SPECS[family]
    tokenizer = cls(tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)), **named)
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    tokenizer.chat_template = template
    return tokenizer
