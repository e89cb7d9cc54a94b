"""Tool calls and JSON answers: render tools through a host's chat template, parse calls out of its answers.

Framework-free (plain dicts, the OpenAI/Hugging Face tool format ``{"type": "function", "function": {"name",
"description", "parameters"}}``); the LangChain adapter translates its messages and tools to these and back.

**Rendering** (:func:`render_tool_prompt`): the conversation goes through ``tokenizer.apply_chat_template(...,
tools=...)``. What the template cannot show is written in the Hermes format (:data:`HERMES`), the one small
instruction-tuned hosts have seen most: tools the template ignores become a ``<tools>`` block in the system
message, assistant tool calls it ignores become ``<tool_call>{json}</tool_call>`` text, tool results it cannot
render become ``<tool_response>`` user turns (as Qwen2.5's own template renders them). Whether the template
takes each part is learned by rendering a probe, not guessed from its name.

**Forcing** (:func:`forced_prefix`): ``tool_choice`` is kept by writing the start of the call into the answer
(after the generation prompt): ``<tool_call>\\n{"name": "`` for any tool, plus the name and ``", "arguments": {`` for
a named one (the arguments are an object); the host writes the rest. A JSON answer (structured output) is
forced to start with ``{``.

**Parsing** (:func:`parse_tool_calls`), the formats of the common templates:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or more; a missing closing
  tag at the very end is accepted);
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (the marker is a special token that decoding
  may drop: a whole answer that is such a list counts too) and ``[TOOL_CALLS]name[ARGS]{...}``;
- Llama-3: an answer that is only JSON ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>`` may precede it;
  several calls separated by ``;``), counted as a call only when ``name`` is one of the tools.

``arguments`` may be an object or a JSON string of one. A call that cannot be read (bad JSON, unknown tool,
arguments not an object) is an :class:`InvalidToolCall`, never dropped silently and never executed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InputError, TemplateError
from .positions import neutralise_special_tokens

__all__ = [
    "HERMES",
    "LLAMA3",
    "MISTRAL",
    "InvalidToolCall",
    "ParsedAnswer",
    "ToolCall",
    "ToolFormat",
    "ToolPrompt",
    "forced_prefix",
    "json_instruction",
    "parse_json_answer",
    "parse_tool_calls",
    "render_tool_prompt",
    "tool_format",
    "tool_names",
]

ToolFormat = Literal["hermes", "llama3", "mistral"]
HERMES: ToolFormat = "hermes"
LLAMA3: ToolFormat = "llama3"
MISTRAL: ToolFormat = "mistral"

_DECODER = json.JSONDecoder()
_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL_MARK = "[TOOL_CALLS]"
_PYTHON_TAG = "<|python_tag|>"


@dataclass(frozen=True)
class ToolCall:
    """One call the host asked for: the tool's ``name`` and its ``arguments`` (a JSON object)."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    """A call the host started but that cannot be run: the ``raw`` text, the ``name`` if readable, why."""

    raw: str
    error: str
    name: str | None = None


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer split into its ``text`` (the calls' markup removed, stripped) and its tool calls."""

    text: str
    calls: tuple[ToolCall, ...] = ()
    invalid: tuple[InvalidToolCall, ...] = ()
    format: ToolFormat | None = None


@dataclass(frozen=True)
class ToolPrompt:
    """A conversation rendered for an answer: the ``text`` (generation prompt and any forced start included),
    the ``forced`` start of the answer (already in ``text``; the host's answer continues it) and the tool-call
    ``format`` the host is expected to answer in."""

    text: str
    forced: str = ""
    format: ToolFormat = HERMES
    native: dict[str, bool] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ parsing

def tool_names(tools: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The names of tools in the OpenAI format (``{"type": "function", "function": {"name": ...}}``).

    Raises:
        InputError: a tool without a ``function.name`` string.
    """
    names: list[str] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InputError(f"tool {index} has no function name; give tools as "
                             "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}")
        names.append(name)
    return tuple(names)


def _arguments(value: object) -> dict[str, Any] | None:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def _call(data: object, raw: str, names: Collection[str] | None) -> ToolCall | InvalidToolCall:
    """A call from a decoded JSON object ``{"name", "arguments" | "parameters"}``."""
    if not isinstance(data, Mapping):
        return InvalidToolCall(raw=raw, error="a tool call must be a JSON object with 'name' and 'arguments'")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return InvalidToolCall(raw=raw, error="the tool call has no 'name'")
    if names is not None and name not in names:
        return InvalidToolCall(raw=raw, name=name, error=f"unknown tool {name!r}; the tools are {sorted(names)}")
    arguments = _arguments(data.get("arguments", data.get("parameters")))
    if arguments is None:
        return InvalidToolCall(raw=raw, name=name, error="the tool call's arguments are not a JSON object")
    return ToolCall(name=name, arguments=arguments)


def _split(found: Sequence[ToolCall | InvalidToolCall]) -> tuple[tuple[ToolCall, ...], tuple[InvalidToolCall, ...]]:
    calls = tuple(item for item in found if isinstance(item, ToolCall))
    return calls, tuple(item for item in found if isinstance(item, InvalidToolCall))


def _decode_at(text: str, start: int) -> tuple[object, int] | None:
    """The JSON value starting at (whitespace after) ``start`` and the index after it, or None."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return None


def _hermes(text: str, names: Collection[str] | None) -> ParsedAnswer | None:
    if _HERMES_OPEN not in text:
        return None
    found: list[ToolCall | InvalidToolCall] = []
    pieces: list[str] = []
    position = 0
    while (start := text.find(_HERMES_OPEN, position)) >= 0:
        pieces.append(text[position:start])
        body_start = start + len(_HERMES_OPEN)
        close = text.find(_HERMES_CLOSE, body_start)
        end = len(text) if close < 0 else close + len(_HERMES_CLOSE)
        body = text[body_start:len(text) if close < 0 else close]
        decoded = _decode_at(body, 0)
        if decoded is None or body[decoded[1]:].strip():
            found.append(InvalidToolCall(raw=body.strip(), error="the <tool_call> body is not one JSON object"))
        else:
            found.append(_call(decoded[0], body.strip(), names))
        position = end
    pieces.append(text[position:])
    calls, invalid = _split(found)
    return ParsedAnswer(text="".join(pieces).strip(), calls=calls, invalid=invalid, format=HERMES)


def _json_list(value: object, raw: str, names: Collection[str] | None) -> list[ToolCall | InvalidToolCall]:
    items = value if isinstance(value, list) else [value]
    return [_call(item, raw, names) for item in items]


def _mistral(text: str, names: Collection[str] | None) -> ParsedAnswer | None:
    mark = text.find(_MISTRAL_MARK)
    if mark < 0:
        stripped = text.strip()
        if not stripped.startswith("["):  # the marker may have been dropped with the special tokens
            return None
        decoded = _decode_at(stripped, 0)
        if decoded is None or stripped[decoded[1]:].strip() or not isinstance(decoded[0], list) or not all(
                isinstance(item, Mapping) and item.get("name") in (names or ()) for item in decoded[0]) \
                or not decoded[0]:
            return None
        calls, invalid = _split(_json_list(decoded[0], stripped, names))
        return ParsedAnswer(text="", calls=calls, invalid=invalid, format=MISTRAL)
    head, rest = text[:mark], text[mark + len(_MISTRAL_MARK):]
    found: list[ToolCall | InvalidToolCall] = []
    tail = ""
    named = re.match(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]", rest)
    if named:  # [TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name2[ARGS]{...}
        for piece in rest.split(_MISTRAL_MARK):
            match = re.match(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]", piece)
            decoded = _decode_at(piece, match.end()) if match else None
            if match is None or decoded is None:
                found.append(InvalidToolCall(raw=piece.strip(), error="not name[ARGS]{json}"))
                continue
            found.append(_call({"name": match[1], "arguments": decoded[0]}, piece.strip(), names))
            tail += piece[decoded[1]:]
    else:
        decoded = _decode_at(rest, 0)
        if decoded is None:
            found.append(InvalidToolCall(raw=rest.strip(), error="the [TOOL_CALLS] body is not JSON"))
        else:
            found.extend(_json_list(decoded[0], rest.strip(), names))
            tail = rest[decoded[1]:]
    calls, invalid = _split(found)
    return ParsedAnswer(text=(head + tail).strip(), calls=calls, invalid=invalid, format=MISTRAL)


def _llama3(text: str, names: Collection[str] | None) -> ParsedAnswer | None:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith("{") or names is None:
        return None
    found: list[ToolCall | InvalidToolCall] = []
    position = 0
    while position < len(body):
        decoded = _decode_at(body, position)
        if decoded is None:
            return None
        data, position = decoded
        if not (isinstance(data, Mapping) and data.get("name") in names
                and ("parameters" in data or "arguments" in data)):
            return None  # JSON that is not a call to one of the tools: an ordinary (JSON) answer
        found.append(_call(data, json.dumps(data), names))
        rest = body[position:].lstrip()
        if rest.startswith(";"):
            rest = rest[1:].lstrip()
        position = len(body) - len(rest)
    calls, invalid = _split(found)
    return ParsedAnswer(text="", calls=calls, invalid=invalid, format=LLAMA3)


def parse_tool_calls(text: str, names: Collection[str] | None = None) -> ParsedAnswer:
    """Split an answer into its text and tool calls (Hermes, Mistral or Llama-3 JSON; see the module docstring).

    Args:
        text: the host's answer as decoded (special tokens may be dropped).
        names: the tools' names; a call to another name is invalid. Llama-3 plain JSON and a Mistral list
            without its marker count as calls only with ``names`` given (else any JSON answer would be a call).

    An answer without calls is returned as its text (stripped), ``format=None``.
    """
    if not isinstance(text, str):
        raise InputError(f"parse_tool_calls takes the answer's text (a str), got {type(text).__name__}")
    for parse in (_hermes, _mistral, _llama3):
        parsed = parse(text, names)
        if parsed is not None:
            return parsed
    return ParsedAnswer(text=text.strip())


def parse_json_answer(text: str) -> Any:
    """The first JSON object (or array) in an answer (text around it, e.g. a code fence, is ignored).

    Raises:
        InputError: the answer holds no JSON object.
    """
    for match in re.finditer(r"[{\[]", text):
        decoded = _decode_at(text, match.start())
        if decoded is not None:
            return decoded[0]
    raise InputError(f"the answer holds no JSON object: {text[:200]!r}")


# ------------------------------------------------------------------------------------------------ rendering

_PROBE_TOOL = {"type": "function", "function": {"name": "zqxprobetool", "description": "zqxprobedescription",
                                                "parameters": {"type": "object", "properties": {}}}}


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
            chat_template: str | None = None) -> str:
    try:
        text = tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                             chat_template=chat_template, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # jinja errors and the template's own raise_exception()
        raise TemplateError(f"the chat template cannot render these messages: {error}") from error
    if not isinstance(text, str):
        raise TemplateError(f"the chat template rendered a {type(text).__name__}, expected a str")
    return text


def _renders(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
             needle: str, chat_template: str | None) -> bool:
    try:
        return needle in _render(tokenizer, messages, tools, chat_template)
    except TemplateError:
        return False


def _native(tokenizer: Any, chat_template: str | None) -> dict[str, bool]:
    """Which tool parts the template renders itself: tool definitions, assistant tool calls, tool results."""
    user = {"role": "user", "content": "zqxprobeuser"}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "zqxid", "function": {"name": "zqxprobecall", "arguments": {}}}]}
    result = {"role": "tool", "content": "zqxproberesult", "tool_call_id": "zqxid", "name": "zqxprobecall"}
    return {
        "tools": _renders(tokenizer, [user], [_PROBE_TOOL], "zqxprobetool", chat_template),
        "tool_calls": _renders(tokenizer, [user, call, {**user}], None, "zqxprobecall", chat_template),
        "tool_results": _renders(tokenizer, [user, call, result], None, "zqxproberesult", chat_template),
    }


def tool_format(tokenizer: Any, chat_template: str | None = None) -> ToolFormat:
    """The tool-call format a template teaches (read from its source): Mistral's ``[TOOL_CALLS]``, Llama-3's
    ``"parameters"`` JSON (a template with ``<|python_tag|>`` or ``<|eom_id|>``), else Hermes ``<tool_call>``."""
    source = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    source = source if isinstance(source, str) else ""
    if _MISTRAL_MARK in source:
        return MISTRAL
    if _HERMES_OPEN not in source and ("<|python_tag|>" in source or "<|eom_id|>" in source):
        return LLAMA3
    return HERMES


def _hermes_system(tools: Sequence[Mapping[str, Any]]) -> str:
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("You may call one or more functions to answer the user. The functions are given as JSON signatures "
            f"within <tools></tools>:\n<tools>\n{listed}\n</tools>\nTo call a function, answer with a JSON object "
            "holding its name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def _hermes_call(call: Mapping[str, Any]) -> str:
    function = call.get("function", call)
    arguments = _arguments(function.get("arguments")) or {}
    data = {"name": function.get("name"), "arguments": arguments}
    return f"{_HERMES_OPEN}\n{json.dumps(data, ensure_ascii=False)}\n{_HERMES_CLOSE}"


def _add_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        joined = f"{first['content']}\n\n{text}" if first.get("content") else text
        return [{**first, "content": joined}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def json_instruction(schema: Mapping[str, Any] | None) -> str:
    """The system instruction of a JSON answer: any JSON object (``schema=None``) or one following ``schema``."""
    if schema is None:
        return "Answer only with one JSON object, no other text."
    return ("Answer only with one JSON object, no other text. It must follow this JSON schema:\n"
            + json.dumps(dict(schema), ensure_ascii=False))


def forced_prefix(format: ToolFormat, tool: str | None) -> str:
    """The start of a forced tool call in ``format``: any tool (``tool=None``) or the one named ``tool``."""
    if format == MISTRAL:
        head = '[TOOL_CALLS] [{"name": "'
        return head if tool is None else f'{head}{tool}", "arguments": {{'
    if format == LLAMA3:
        return '{"name": "' if tool is None else f'{{"name": "{tool}", "parameters": {{'
    head = f'{_HERMES_OPEN}\n{{"name": "'
    return head if tool is None else f'{head}{tool}", "arguments": {{'


def render_tool_prompt(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    tool_choice: str | None = None,
    json_schema: Mapping[str, Any] | None = None,
    json_answer: bool = False,
    chat_template: str | None = None,
) -> ToolPrompt:
    """Render a conversation with tools (and tool turns) for the host to answer; see the module docstring.

    Args:
        tokenizer: the host's tokenizer (``apply_chat_template``).
        messages: ``{"role", "content"}`` messages; assistant messages may hold ``tool_calls`` (OpenAI format),
            ``{"role": "tool", "content", "tool_call_id", "name"}`` messages are tool results.
        tools: tool definitions in the OpenAI format (:func:`tool_names` checks them).
        chat_template: a template to use instead of the tokenizer's.
        tool_choice: None or ``"auto"`` (the host decides), ``"any"`` (some tool call is forced) or a tool name.
        json_schema / json_answer: a JSON answer (structured output) following ``json_schema``, or any JSON
            object (``json_answer`` without a schema); the answer is forced to start with ``{``.

    Raises:
        InputError: bad tools or tool_choice. TemplateError: the template cannot render the conversation.
    """
    tools = list(tools or ())
    names = tool_names(tools)
    if tool_choice not in (None, "auto", "any") and tool_choice not in names:
        raise InputError(f"tool_choice must be None, 'auto', 'any' or one of the tools {list(names)}, "
                         f"got {tool_choice!r}")
    if tool_choice == "any" and not tools:
        raise InputError("tool_choice='any' needs at least one tool")
    native = _native(tokenizer, chat_template)
    out: list[dict[str, Any]] = []
    for message in neutralise_special_tokens(tokenizer, messages):  # typed special tokens open no fake turns
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls") and not native["tool_calls"]:
            calls = "\n".join(_hermes_call(call) for call in message["tool_calls"])
            content = str(message.get("content") or "")
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool" and not native["tool_results"]:
            response = f"<tool_response>\n{message.get('content', '')}\n</tool_response>"
            if out and out[-1]["role"] == "user" and str(out[-1]["content"]).endswith("</tool_response>"):
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{response}"}
            else:
                out.append({"role": "user", "content": response})
        else:
            out.append(dict(message))
    fmt = tool_format(tokenizer, chat_template) if native["tools"] else HERMES
    rendered_tools: list[Mapping[str, Any]] | None = tools or None
    if tools and not native["tools"]:
        out = _add_system(out, _hermes_system(tools))
        rendered_tools = None
    if json_schema is not None or json_answer:
        out = _add_system(out, json_instruction(json_schema))
    text = _render(tokenizer, out, rendered_tools, chat_template)
    forced = ""
    if tool_choice == "any" or (tool_choice is not None and tool_choice != "auto"):
        named = tool_choice if tool_choice != "any" else (names[0] if len(names) == 1 else None)
        forced = forced_prefix(fmt, named)
    elif json_schema is not None or json_answer:
        forced = "{"
    return ToolPrompt(text=text + forced, forced=forced, format=fmt, native=native)
