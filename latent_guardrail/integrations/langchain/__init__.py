"""LangChain adapter: a guard runnable, a chat model that shares one forward pass, and agent middleware.

- :class:`LatentGuardRunnable` — ``str`` / messages / ``PromptValue`` → :class:`~latent_guardrail.Verdict`, or the
  input passed through (raising :class:`LatentGuardBlocked` on a block); ``guard | chat_model``.
- :func:`guarded_chain` — ``guard | chat_model`` with a refusal fallback, in one call.
- :class:`GuardedChatModel` — a ``BaseChatModel`` over the guard's host; verdict and answer from one prefill.
- :class:`LatentGuardMiddleware` — ``create_agent(..., middleware=[LatentGuardMiddleware(guard)])`` (needs the
  ``langchain`` package; imported on first use).

Needs ``pip install 'latent-guardrail[langchain]'`` (langchain-core >= 1.8, langchain >= 1.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "latent_guardrail.integrations.langchain needs LangChain: pip install 'latent-guardrail[langchain]'"
    ) from exc

from ...guarded import DEFAULT_REFUSAL, LatentGuardBlocked
from .chat_model import GuardedChatModel
from .messages import guard_for, host_from_langchain, output_verdict_of, to_prompt, verdict_metadata, verdict_of
from .runnable import LatentGuardRunnable, guarded_chain

if TYPE_CHECKING:
    from .middleware import LatentGuardMiddleware

__all__ = [
    "DEFAULT_REFUSAL",
    "GuardedChatModel",
    "LatentGuardBlocked",
    "LatentGuardMiddleware",
    "LatentGuardRunnable",
    "guard_for",
    "guarded_chain",
    "host_from_langchain",
    "output_verdict_of",
    "to_prompt",
    "verdict_metadata",
    "verdict_of",
]


def __getattr__(name: str) -> Any:
    if name == "LatentGuardMiddleware":  # needs the `langchain` package, not only langchain-core
        from .middleware import LatentGuardMiddleware

        return LatentGuardMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
