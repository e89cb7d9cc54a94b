"""LangChain's standard integration suite (``langchain-tests``) for GuardedChatModel on the default guard and host."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from latent_guardrail import LatentGuard
from latent_guardrail.hosts import load_host
from latent_guardrail.integrations.langchain import GuardedChatModel

pytestmark = pytest.mark.integration

_GUARD: list[LatentGuard] = []


def _default_guard() -> LatentGuard:
    if not _GUARD:
        _GUARD.append(LatentGuard.load("default", load_host("default"), progress=False))
    return _GUARD[0]


class TestGuardedChatModelStandardIntegration(ChatModelIntegrationTests):
    """The standard integration suite on SmolLM2-135M-Instruct (the default host) behind the default guard.

    What the host truly lacks, so the suite skips it:

    - ``has_tool_calling = False`` (and so no tool choice): the host's chat template has no tools and the 135M
      model does not call tools — unforced it answers in prose, forced (``tool_choice``) it writes arguments that
      do not fit the schema (see ``test_langchain_default.py::test_tools_plumbing_on_the_default_host``, which
      asserts the plumbing and prints what the host does). The tool path itself passes on a scripted tiny host
      (``tests/unit/test_langchain_tools.py``).
    - ``has_structured_output = False``: without constrained decoding the host's JSON does not follow a schema.
    - images, audio, PDF, Anthropic-style inputs: a text-only host (the suite's defaults already say so).
    - ``supports_model_override = False``: the model is the guard's host; a per-call ``model`` cannot change it.
    - ``test_stream_time`` (VCR recordings) is for remote APIs.
    """

    @property
    def chat_model_class(self) -> type[GuardedChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"guard": _default_guard(), "max_new_tokens": 24}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

