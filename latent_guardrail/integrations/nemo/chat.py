"""``latent-guardrail nemo-chat``: chat in the terminal with a NeMo Guardrails app guarded by the latent guard.

Without ``--config`` the app is built in code (:func:`build_config`): the default host as the ``latent_guardrail``
main LLM, ``passthrough: true`` and the ``latent guard check input`` rail. With ``--config FOLDER`` any NeMo
config folder is used (e.g. ``integrations/nemoguardrails``). Each answer is followed by the rail's verdict.
This module imports NeMo (and the NeMo adapter, which needs it) only inside the functions that use it, so
registering the command costs nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from latent_guardrail.errors import LatentGuardError

__all__ = ["build_config", "chat_loop", "nemo_chat_command", "rail_line"]


def build_config(*, max_new_tokens: int = 128, colang: str = "1.0", on_block: str = "refuse",
                 guard: str = "default") -> Any:
    """A complete NeMo ``RailsConfig`` on the default host: the latent main LLM, passthrough, the latent rail.

    Raises:
        NemoConfigError: ``colang`` is not ``1.0`` or ``2.x``.
    """
    from nemoguardrails import RailsConfig

    from latent_guardrail.integrations.nemo.loading import NemoConfigError
    from latent_guardrail.integrations.nemo.rail import rail_path

    if colang not in ("1.0", "2.x"):
        raise NemoConfigError(f"colang must be 1.0 or 2.x, got {colang!r}")
    settings = {"guard": guard, "on_block": on_block}
    yaml = "\n".join([
        f'colang_version: "{colang}"',
        f"import_paths: [{json.dumps(rail_path())}]",
        "models:",
        "  - {type: main, engine: latent_guardrail, model: default, parameters: {max_new_tokens: "
        f"{int(max_new_tokens)}}}}}",
        "passthrough: true",
        f"custom_data: {{latent_guard: {json.dumps(settings)}}}",
    ])
    if colang == "1.0":
        return RailsConfig.from_content(yaml_content=yaml + "\nrails: {input: {flows: [latent guard check input]}}\n")
    colang_content = "\n".join([
        "import core", "import guardrails", "", "flow main", "  activate answer with the main llm", "",
        "flow input rails $input_text", "  latent guard check input", "",
        "flow answer with the main llm", "  global $user_message", "  user said something",
        "  $bot_message = await PassthroughLLMAction(user_message=$user_message)", "  bot say $bot_message", ""])
    return RailsConfig.from_content(yaml_content=yaml, colang_content=colang_content)


def rail_line(response: Any) -> str | None:
    """One line with the latent rail's verdict from a response's activated-rails log (Colang 1.0), or None."""
    log = getattr(response, "log", None)
    for rail in getattr(log, "activated_rails", None) or []:
        for executed in rail.executed_actions:
            metadata = getattr(executed.return_value, "metadata", None)
            if executed.action_name == "latent_guard_check_input" and isinstance(metadata, dict):
                decision = "BLOCK" if executed.return_value.is_blocked else "PASS"
                if metadata.get("status") != "ok":
                    return f"[latent guard] {decision} (failure policy: {metadata.get('error')})"
                category = f", category {metadata['category']}" if metadata.get("category") else ""
                shared = ", answer from the same prefill" if metadata.get("shared_prefill") else ""
                return (f"[latent guard] {decision} score {metadata['score']:+.3f} vs threshold "
                        f"{metadata['threshold']:+.3f}{category}, layers {metadata['layers']}{shared}")
    return None


def chat_loop(app: Any, lines: Iterable[str], write: Callable[[str], None], *, show_verdict: bool = True) -> int:
    """Answer each line with ``app`` (keeping the conversation); ``/reset`` forgets it, ``/quit`` ends.

    Returns the number of answered messages.
    """
    history: list[dict[str, str]] = []
    answered = 0
    colang1 = getattr(app.config, "colang_version", "1.0") == "1.0"
    for line in lines:
        text = line.rstrip("\n")
        if text.strip() == "/quit":
            break
        if text.strip() == "/reset":
            history.clear()
            write("(conversation reset)")
            continue
        history.append({"role": "user", "content": text})
        options = {"log": {"activated_rails": True}} if colang1 else None
        response = app.generate(messages=history, options=options)
        messages = getattr(response, "response", response)
        message = messages[-1] if isinstance(messages, list) else messages
        content = str(message.get("content", "")) if isinstance(message, dict) else str(message)
        if isinstance(message, dict) and message.get("role") == "exception":
            content = f"(exception) {content}"
            history.pop()
        else:
            history.append({"role": "assistant", "content": content})
        write(f"bot: {content}")
        if show_verdict:
            line_out = rail_line(response)
            if line_out is not None:
                write(line_out)
        answered += 1
    return answered


def nemo_chat_command(
    config: Annotated[str | None, typer.Option("--config", "-c",
                                               help="A NeMo config folder (default: built in, on the default host).")
                      ] = None,
    colang: Annotated[str, typer.Option(help="Colang version of the built-in config: 1.0 or 2.x.")] = "1.0",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer (built-in config).")] = 128,
    on_block: Annotated[str, typer.Option(help="refuse or steer (built-in config).")] = "refuse",
    verdict: Annotated[bool, typer.Option(help="Print the rail's verdict after each answer.")] = True,
) -> None:
    """Chat in the terminal with a NeMo Guardrails app guarded by the latent guard (/reset, /quit, Ctrl-D)."""
    from nemoguardrails import LLMRails, RailsConfig

    try:
        rails_config = RailsConfig.from_path(config) if config is not None else build_config(
            max_new_tokens=max_new_tokens, colang=colang, on_block=on_block)
        app = LLMRails(rails_config)
    except (LatentGuardError, RuntimeError, ValueError) as exc:
        cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ is not None else exc
        typer.echo(f"error: {cause}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo("latent-guardrail nemo-chat: type a message (/reset, /quit)", err=True)

    def lines() -> Iterable[str]:
        while True:
            if sys.stdin.isatty():
                sys.stderr.write("you: ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    chat_loop(app, lines(), typer.echo, show_verdict=verdict)
