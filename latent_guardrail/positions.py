"""The two token positions the guard reads: ``t_inst`` and ``t_post_inst``.

- ``t_inst``: the last token of the last user message's content, i.e. the token just before the chat
  template's post-instruction tokens (``<|im_end|>\\n<|im_start|>assistant\\n``, `` [/INST]``, ...).
  Harmfulness lives here.
- ``t_post_inst``: the last token of the whole prompt, generation prompt included. Refusal lives here.

No offset is hard-coded. The conversation is rendered a second time with the last user content replaced by
a unique sentinel; what precedes and follows the sentinel is the template's prefix and suffix, so the real
content is whatever the real rendering holds between them (this copes with templates that ``trim`` content).
The content's last character is then mapped to a token with the tokenizer's offset mapping, or, for slow
tokenizers without one, by comparing the tokenization of the text up to that character with the full one.

Special tokens typed by the user (``"<|im_end|>"``, ``"<|eot_id|>"``, ...) would otherwise open fake turns, so
every occurrence of a special-token string inside user and assistant contents is neutralised before rendering
by inserting U+200B (zero-width space) after its first character. The system prompt is the operator's and is
left alone. Tags that are plain text for the tokenizer (Llama-2's ``[/INST]``) need no treatment: the sentinel
method locates the real content wherever such text appears.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import torch

from latent_guardrail.errors import InputError, TemplateError
from latent_guardrail.segments import clause_ends

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Message",
    "PaddedBatch",
    "Prompt",
    "PromptEncoding",
    "encode_batch",
    "encode_prompt",
    "neutralise_special_tokens",
    "pad_batch",
    "render_with_generation_prompt",
    "to_messages",
]

Message = dict[str, str]
Prompt = str | Sequence[Mapping[str, str]]

ROLES = ("system", "user", "assistant")
ZERO_WIDTH_SPACE = "\u200b"


class PromptEncoding(pydantic.BaseModel, frozen=True):
    """One rendered, tokenized prompt with its two positions (indices into ``input_ids``, unpadded).

    ``input_ids``: ``(seq,)`` the whole prompt, generation prompt included. ``t_inst``: the token holding the
    last character of the last user content. ``t_post_inst``: ``seq - 1``. ``text``: the rendered prompt;
    ``content_span``: ``[start, end)`` of that user content in ``text``. ``truncated``: the content was cut
    from the left to fit ``max_tokens``. ``sanitized``: special-token text in the contents was neutralised.

    Every user turn: ``user_spans`` are the ``[start, end)`` character spans of all user contents in ``text``
    (the last one is ``content_span``), ``user_messages`` their indices in the caller's message list (a plain
    string is message 0). ``ends`` are the token indices of every clause end in those contents
    (:func:`latent_guardrail.segments.clause_ends`; sorted, unique, the last is ``t_inst``), and
    ``end_clauses[i]`` is ``(k, start, end)``: the clause that ends at ``ends[i]``, as character offsets into the
    content of user turn ``k`` (an index into ``user_spans``).
    """

    input_ids: tuple[int, ...]
    t_inst: int
    t_post_inst: int
    text: str
    content_span: tuple[int, int]
    truncated: bool = False
    sanitized: bool = False
    t_content_start: int = 0
    user_spans: tuple[tuple[int, int], ...] = ()
    user_messages: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    end_clauses: tuple[tuple[int, int, int], ...] = ()
    normalized: bool = False

    @pydantic.model_validator(mode="after")
    def _check_positions(self) -> PromptEncoding:
        if not 0 <= self.t_content_start <= self.t_inst:
            raise ValueError(f"need 0 <= t_content_start <= t_inst, got {self.t_content_start} > {self.t_inst}")
        if self.t_post_inst != len(self.input_ids) - 1 or not 0 <= self.t_inst <= self.t_post_inst:
            raise ValueError(
                f"need 0 <= t_inst <= t_post_inst == len(input_ids) - 1, got t_inst={self.t_inst}, "
                f"t_post_inst={self.t_post_inst}, len(input_ids)={len(self.input_ids)}"
            )
        start, end = self.content_span
        if not 0 <= start < end <= len(self.text):
            raise ValueError(f"content_span {self.content_span} is not a non-empty span of the text")
        if len(self.end_clauses) != len(self.ends) or list(self.ends) != sorted(set(self.ends)):
            raise ValueError("ends must be sorted, unique and match end_clauses one to one")
        if self.ends and not (self.ends[-1] == self.t_inst and 0 <= self.ends[0]):
            raise ValueError(f"the last clause end must be t_inst={self.t_inst}, got {self.ends[-1]}")
        if len(self.user_messages) != len(self.user_spans):
            raise ValueError("user_messages and user_spans must have one entry per user turn")
        return self

    @property
    def offset_from_end(self) -> int:
        """``t_inst - len(input_ids)``: negative, unchanged by left padding (-5 Llama-2, -6 Llama-3)."""
        return self.t_inst - len(self.input_ids)


@dataclass(frozen=True)
class PaddedBatch:
    """Padded prompts; positions are in padded coordinates.

    ``input_ids`` and ``attention_mask``: LongTensor ``(batch, seq)``; ``t_inst``, ``t_post_inst`` and
    ``t_content_start`` (first token of the last user message's content): LongTensor ``(batch,)``. ``ends``:
    LongTensor ``(batch, E)``, every row's clause ends right-aligned (its last column is ``t_inst``) and filled
    on the left with the row's first end, ``E`` the most ends of a row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    t_inst: torch.Tensor
    t_post_inst: torch.Tensor
    t_content_start: torch.Tensor
    ends: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PaddedBatch:
        """The same batch with every tensor moved to ``device``."""
        ends = None if self.ends is None else self.ends.to(device)
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.t_inst.to(device),
                           self.t_post_inst.to(device), self.t_content_start.to(device), ends)


def to_messages(prompt: Prompt, system_prompt: str | None = None) -> list[Message]:
    """Validate ``prompt`` and return it as a list of ``{"role", "content"}`` messages.

    A plain string is one user message. The last message must be a non-empty user message; a system
    message may only come first. ``system_prompt`` is prepended unless the messages start with a system one.
    Trailing whitespace of the last user message is dropped, so ``t_inst`` is its last visible token (a
    trailing newline would otherwise move t_inst onto a whitespace token and change the verdict).
    """
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InputError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and not isinstance(prompt, bytes | bytearray):
        if len(prompt) == 0:
            raise InputError("the conversation is empty; give a string or at least one user message")
        messages = [_check_message(message, index) for index, message in enumerate(prompt)]
    else:
        raise InputError(
            "a prompt must be a str or a sequence of {'role': ..., 'content': ...} messages, "
            f"got {type(prompt).__name__}"
        )
    for index, message in enumerate(messages):
        if message["role"] == "system" and index != 0:
            raise InputError(f"message {index}: a system message may only be the first message")
    if messages[-1]["role"] != "user":
        raise InputError(f"the last message must have role 'user', got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise InputError("the prompt (the last user message) is empty or whitespace only; give some text")
    messages[-1] = {**messages[-1], "content": messages[-1]["content"].rstrip()}
    if system_prompt is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _check_message(message: object, index: int) -> Message:
    if not isinstance(message, Mapping):
        raise InputError(f"message {index} must be a mapping with 'role' and 'content', got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InputError(f"message {index}: role must be one of {ROLES}, got {role!r}")
    if not isinstance(content, str):
        raise InputError(f"message {index}: content must be a str, got {type(content).__name__}")
    return {"role": role, "content": content}


def render_with_generation_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, chat_template: str | None = None
) -> str:
    """Render ``messages`` with the chat template and the generation prompt, as the model will see them."""
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise TemplateError(
            f"{type(tokenizer).__name__} has no chat template; pass chat_template='...' (a Jinja template "
            "string) or use a chat/instruct model whose tokenizer defines one"
        )
    try:
        text = tokenizer.apply_chat_template(
            list(messages), chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # jinja syntax errors and the template's own raise_exception()
        raise TemplateError(f"the chat template cannot render these messages: {error}") from error
    if not isinstance(text, str):
        raise TemplateError(f"the chat template rendered a {type(text).__name__}, expected a str")
    return text


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    *,
    system_prompt: str | None = None,
    max_tokens: int | None = None,
    chat_template: str | None = None,
) -> PromptEncoding:
    """Render, sanitise and tokenize one prompt and locate ``t_inst`` and ``t_post_inst``.

    With ``max_tokens``, the last user message is cut from the left (its end, where the instruction usually
    is, is kept) until the whole prompt fits; :class:`InputError` if even one character of it does not fit.
    """
    bad_type = isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
    if max_tokens is not None and (bad_type or max_tokens < 1):
        raise InputError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    messages, sanitized = _sanitize(tokenizer, to_messages(prompt, system_prompt))
    first = messages[0]["role"] == "system" and (isinstance(prompt, str) or _role(prompt[0]) != "system")
    shift = 1 if first else 0  # a system message the guard put in front is not the caller's
    encoding = _encode(tokenizer, messages, chat_template, sanitized, shift=shift)
    if max_tokens is None or len(encoding.input_ids) <= max_tokens:
        return encoding

    content = messages[-1]["content"]
    last = len(content.rstrip()) - 1  # keep at least the last non-space character
    encodings: dict[int, PromptEncoding] = {}

    def fits(cut: int) -> bool:
        cut_messages = [*messages[:-1], {"role": "user", "content": content[cut:]}]
        encodings[cut] = _encode(tokenizer, cut_messages, chat_template, sanitized, truncated=True, shift=shift)
        return len(encodings[cut].input_ids) <= max_tokens

    if not fits(last):
        raise InputError(
            f"the prompt needs at least {len(encodings[last].input_ids)} tokens even with the last user "
            f"message cut to its final character; raise max_tokens (now {max_tokens}) or shorten the system "
            "prompt and earlier turns"
        )
    low, high = 1, last  # binary search for the smallest cut that fits
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return encodings[high]  # high only ever takes cuts that were tried and fit


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    system_prompt: str | None = None,
    max_tokens: int | None = None,
    chat_template: str | None = None,
) -> list[PromptEncoding]:
    """:func:`encode_prompt` for each prompt, with the same settings."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise InputError(
            f"encode_batch takes a sequence of prompts, got {type(prompts).__name__}; for one prompt use encode_prompt"
        )
    return [
        encode_prompt(
            tokenizer, prompt, system_prompt=system_prompt, max_tokens=max_tokens, chat_template=chat_template
        )
        for prompt in prompts
    ]


def pad_batch(
    encodings: Sequence[PromptEncoding], pad_token_id: int, side: Literal["left", "right"] = "left"
) -> PaddedBatch:
    """Pad encodings to the longest one; positions are shifted to padded coordinates.

    Returns ``input_ids`` and ``attention_mask`` of shape ``(batch, seq)`` and ``t_inst``/``t_post_inst`` of
    shape ``(batch,)``, all LongTensors. Left padding (the default) puts every ``t_post_inst`` at ``seq - 1``.
    """
    if len(encodings) == 0:
        raise InputError("pad_batch needs at least one encoding")
    if side not in ("left", "right"):
        raise InputError(f"side must be 'left' or 'right', got {side!r}")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise InputError(
            f"pad_token_id must be an int, got {pad_token_id!r}; if the tokenizer has no pad token, "
            "use tokenizer.eos_token_id"
        )
    seq = max(len(encoding.input_ids) for encoding in encodings)
    input_ids = torch.full((len(encodings), seq), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encodings), seq), dtype=torch.long)
    t_inst = torch.empty(len(encodings), dtype=torch.long)
    t_post_inst = torch.empty(len(encodings), dtype=torch.long)
    t_content_start = torch.empty(len(encodings), dtype=torch.long)
    width = max(len(encoding.ends) or 1 for encoding in encodings)
    ends = torch.empty((len(encodings), width), dtype=torch.long)
    for row, encoding in enumerate(encodings):
        length = len(encoding.input_ids)
        start = seq - length if side == "left" else 0
        input_ids[row, start : start + length] = torch.tensor(encoding.input_ids, dtype=torch.long)
        attention_mask[row, start : start + length] = 1
        t_inst[row] = start + encoding.t_inst
        t_post_inst[row] = start + encoding.t_post_inst
        t_content_start[row] = start + encoding.t_content_start
        own = list(encoding.ends) or [encoding.t_inst]
        ends[row] = start + torch.tensor([own[0]] * (width - len(own)) + own, dtype=torch.long)
    return PaddedBatch(input_ids, attention_mask, t_inst, t_post_inst, t_content_start, ends)


def neutralise_special_tokens(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]]
                              ) -> list[dict[str, Any]]:
    """``messages`` with every special-token string in non-system contents neutralised (as :func:`encode_prompt`
    does before rendering); other keys of a message (``tool_calls``, ``name``) are kept."""
    cleaned, _ = _sanitize(tokenizer, [dict(message) for message in messages])
    return cleaned


def _sanitize(tokenizer: PreTrainedTokenizerBase, messages: list[Any]) -> tuple[list[Any], bool]:
    """Neutralise special-token strings in user/assistant contents; also say whether anything changed."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    try:
        tokens |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    except (AttributeError, NotImplementedError):
        pass
    tokens = {token for token in tokens if len(token) > 1}  # a one-character token cannot be split
    if not tokens:
        return messages, False
    pattern = re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)))

    def neutralise(text: str) -> str:
        for _ in range(len(text)):  # overlapping matches need more than one pass; each pass breaks one
            if pattern.search(text) is None:
                break
            text = pattern.sub(lambda match: match[0][0] + ZERO_WIDTH_SPACE + match[0][1:], text)
        return text

    cleaned = [
        message if message["role"] == "system" else {**message, "content": neutralise(message["content"])}
        for message in messages
    ]
    return cleaned, cleaned != messages


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    chat_template: str | None,
    sanitized: bool,
    truncated: bool = False,
    shift: int = 0,
) -> PromptEncoding:
    text = render_with_generation_prompt(tokenizer, messages, chat_template=chat_template)
    content_start, content_end = _content_span(tokenizer, messages, text, chat_template)
    input_ids, offsets = _tokenize(tokenizer, text)
    if not input_ids:
        raise TemplateError("the rendered prompt tokenizes to no tokens")
    if offsets is not None:
        ending = [i for i, (start, end) in enumerate(offsets) if start < content_end and end > start]
        t_inst = ending[-1] if ending else -1
        if t_inst < 0 or offsets[t_inst][1] <= content_start:
            raise TemplateError("no token of the user's content was found in the tokenized prompt")
        t_start = next(i for i, (start, end) in enumerate(offsets) if end > content_start and end > start)
    else:  # slow tokenizer: compare the tokenization of the text up to the content's end with the full one
        head, _ = _tokenize(tokenizer, text[:content_end])
        common = next((i for i, (a, b) in enumerate(zip(head, input_ids, strict=False)) if a != b), len(head))
        # all of head matched: its last token ends the content; else the first differing token straddles it
        t_inst = min(common - 1 if common == len(head) else common, len(input_ids) - 1)
        lead, _ = _tokenize(tokenizer, text[:content_start])
        t_start = next((i for i, (a, b) in enumerate(zip(lead, input_ids, strict=False)) if a != b), len(lead))
    t_inst = max(t_inst, 0)
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    spans = _user_spans(tokenizer, messages, text, chat_template, (content_start, content_end), users)
    users = users[len(users) - len(spans):]
    ends, clauses = _clause_tokens(text, spans, _token_finder(tokenizer, text, input_ids, offsets), t_inst)
    return PromptEncoding(
        input_ids=tuple(input_ids),
        t_inst=t_inst,
        t_post_inst=len(input_ids) - 1,
        t_content_start=min(max(t_start, 0), t_inst),
        text=text,
        content_span=(content_start, content_end),
        truncated=truncated,
        sanitized=sanitized,
        user_spans=tuple(spans),
        user_messages=tuple(index - shift for index in users),
        ends=ends,
        end_clauses=clauses,
    )


def _role(message: object) -> object:
    return message.get("role") if isinstance(message, Mapping) else None


def _user_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], text: str, chat_template: str | None,
                last: tuple[int, int], users: list[int]) -> list[tuple[int, int]]:
    """Character spans of every user content in ``text`` (a render with one sentinel per user content).

    Falls back to the last user content alone when the template does not render each content once and
    verbatim (or trimmed) between content-independent pieces.
    """
    if len(users) < 2:
        return [last]
    number = 0
    while any(f"zqxu{k}s{number}zqx" in text for k in range(len(users))):
        number += 1
    sentinels = [f"zqxu{k}s{number}zqx" for k in range(len(users))]
    probe = list(messages)
    for k, index in enumerate(users):
        probe[index] = {**messages[index], "content": sentinels[k]}
    try:
        rendered = render_with_generation_prompt(tokenizer, probe, chat_template=chat_template)
    except TemplateError:
        return [last]
    if any(rendered.count(sentinel) != 1 for sentinel in sentinels):
        return [last]
    spans: list[tuple[int, int]] = []
    pos = rpos = 0
    for k, sentinel in enumerate(sentinels):
        at = rendered.find(sentinel, rpos)
        piece = rendered[rpos:at]
        if at < 0 or not text.startswith(piece, pos):
            return [last]
        pos += len(piece)
        rpos = at + len(sentinel)
        following = rendered[rpos:rendered.find(sentinels[k + 1], rpos)] if k + 1 < len(sentinels) else None
        content = messages[users[k]]["content"]
        size = next((len(c) for c in (content, content.strip(), content.lstrip(), content.rstrip())
                     if text.startswith(c, pos) and (following is None or text.startswith(following, pos + len(c)))),
                    None)
        if size is None:
            return [last]
        spans.append((pos, pos + size))
        pos += size
    if text[pos:] != rendered[rpos:] or spans[-1] != last:
        return [last]
    return spans


def _token_finder(tokenizer: PreTrainedTokenizerBase, text: str, input_ids: list[int],
                  offsets: list[tuple[int, int]] | None) -> Callable[[int], int | None]:
    """``char -> index of the last token holding text[char]`` (offsets, or re-tokenizing the text up to it)."""
    if offsets is not None:
        owner: dict[int, int] = {}
        for index, (start, end) in enumerate(offsets):
            for char in range(start, end):
                owner[char] = index  # the last token holding a character has seen all of it
        return owner.get

    def by_prefix(char: int) -> int:  # as for t_inst: the last token of the head, or the one straddling it
        head, _ = _tokenize(tokenizer, text[:char + 1])
        common = next((i for i, (a, b) in enumerate(zip(head, input_ids, strict=False)) if a != b), len(head))
        return min(common - 1 if common == len(head) else common, len(input_ids) - 1)

    return by_prefix


def _clause_tokens(text: str, spans: list[tuple[int, int]], token_of: Callable[[int], int | None], t_inst: int
                   ) -> tuple[tuple[int, ...], tuple[tuple[int, int, int], ...]]:
    """Token indices of every clause end in the user contents, and each one's clause (turn, start, end).

    The last end is ``t_inst`` (a clause of the last content whose end token lies past it is dropped).
    """
    last_turn = len(spans) - 1
    whole = (last_turn, 0, spans[-1][1] - spans[-1][0])
    found: dict[int, tuple[int, int, int]] = {}
    for turn, (start, end) in enumerate(spans):
        for clause in clause_ends(text[start:end]):
            token = token_of(start + clause.end - 1)
            if token is not None and 0 <= token <= t_inst:
                found[token] = (turn, clause.start, clause.end)  # a later clause in the same token wins
    if t_inst not in found:
        prior = [c for c in found.values() if c[0] == last_turn]
        found[t_inst] = (last_turn, prior[-1][2], whole[2]) if prior else whole
    ordered = sorted(found)
    return tuple(ordered), tuple(found[token] for token in ordered)


def _content_span(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], text: str, chat_template: str | None
) -> tuple[int, int]:
    """Character span of the last user content in ``text``, learned from a render with a sentinel instead."""
    number = 0
    while (sentinel := f"zqxsentinel{number}zqx") in text:
        number += 1
    probe = [*messages[:-1], {"role": "user", "content": sentinel}]
    rendered = render_with_generation_prompt(tokenizer, probe, chat_template=chat_template)
    if rendered.count(sentinel) != 1:
        raise TemplateError(
            f"the chat template writes the last user message {rendered.count(sentinel)} times (expected "
            "once); cannot locate the instruction"
        )
    prefix, suffix = rendered.split(sentinel)
    end = len(text) - len(suffix)
    if not (text.startswith(prefix) and text.endswith(suffix) and len(prefix) < end):
        raise TemplateError("the chat template renders text around the user message that depends on its content")
    return len(prefix), end


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of ``text`` (no special tokens added: the template writes them) and offsets if available."""
    if getattr(tokenizer, "is_fast", False):
        try:
            encoded: Any = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = [(int(start), int(end)) for start, end in encoded["offset_mapping"]]
            return list(encoded["input_ids"]), offsets
        except NotImplementedError:
            pass
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None
