"""The output rail in the LangChain adapter on a tiny scripted host: GuardedChatModel(check_output=True),
LatentGuardMiddleware(check_output=True) (after_model) and LatentGuardRunnable(target="response")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from latent_guardrail.errors import ArtifactError, InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import LatentGuardBlocked
from latent_guardrail.integrations.langchain import (
    GuardedChatModel,
    LatentGuardMiddleware,
    LatentGuardRunnable,
    output_verdict_of,
)
from latent_guardrail.verdict import Verdict
from tests.support.models import HARMFUL, HARMLESS, make_host
from tests.support.responses import COMPLIANT, HARMFUL_PROMPT, HARMLESS_PROMPT, SAFE, make_response_guard


@pytest.fixture(scope="module")
def guard() -> LatentGuard:
    return make_response_guard()


@pytest.fixture(scope="module")
def strict(guard: LatentGuard) -> LatentGuard:
    """Every check point crosses the response threshold; the input threshold lets every prompt through."""
    return guard.with_settings(response_threshold=-1e9, threshold=1e9)


@pytest.fixture(scope="module")
def lenient(guard: LatentGuard) -> LatentGuard:
    return guard.with_settings(response_threshold=1e9, threshold=1e9)


def _fake(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=answer) for answer in answers]))


# ------------------------------------------------------------------------------------------- chat model

def test_chat_model_stops_a_harmful_answer(strict: LatentGuard) -> None:
    llm = GuardedChatModel(strict, max_new_tokens=60, check_output=True, refusal="No.")
    message = llm.invoke(HARMFUL_PROMPT)
    assert message.content == "No." and message.response_metadata["finish_reason"] == "blocked_output"
    verdict = output_verdict_of(message)
    assert verdict is not None and verdict.target == "response" and verdict.harmful
    chunks = list(llm.stream(HARMFUL_PROMPT))
    assert chunks[-1].response_metadata["finish_reason"] == "blocked_output"
    assert output_verdict_of(chunks[-1]) is not None
    assert "".join(str(c.content) for c in chunks).endswith("No.")


def test_chat_model_passes_and_reports_the_output_verdict(lenient: LatentGuard) -> None:
    plain = GuardedChatModel(lenient, max_new_tokens=60).invoke(HARMLESS_PROMPT)
    checked = GuardedChatModel(lenient, max_new_tokens=60, check_output=True).invoke(HARMLESS_PROMPT)
    assert checked.content == plain.content and output_verdict_of(plain) is None
    verdict = output_verdict_of(checked)
    assert verdict is not None and not verdict.harmful and verdict.target == "response"


def test_chat_model_check_output_needs_a_response_part() -> None:
    host = make_host("chatml")
    plain = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    with pytest.raises(ArtifactError):
        GuardedChatModel(plain, max_new_tokens=4, check_output=True).invoke(HARMLESS_PROMPT)


# ------------------------------------------------------------------------------------------- middleware

def test_middleware_replaces_a_harmful_answer(strict: LatentGuard) -> None:
    agent = create_agent(_fake(COMPLIANT[0]), tools=[],
                         middleware=[LatentGuardMiddleware(strict, check_output=True, refusal="No.")])
    state = agent.invoke({"messages": [HumanMessage(HARMFUL_PROMPT)]})
    last = state["messages"][-1]
    assert isinstance(last, AIMessage) and last.content == "No."
    assert len(state["messages"]) == 2  # the answer was replaced, not followed
    assert last.response_metadata["finish_reason"] == "blocked_output"
    verdict = output_verdict_of(last)
    assert verdict is not None and verdict.harmful


def test_middleware_passes_a_harmless_answer_and_is_off_by_default(lenient: LatentGuard, strict: LatentGuard
                                                                   ) -> None:
    agent = create_agent(_fake(SAFE[2]), tools=[], middleware=[LatentGuardMiddleware(lenient, check_output=True)])
    assert agent.invoke({"messages": [HumanMessage(HARMLESS_PROMPT)]})["messages"][-1].content == SAFE[2]
    off = create_agent(_fake(COMPLIANT[0]), tools=[], middleware=[LatentGuardMiddleware(strict)])
    assert off.invoke({"messages": [HumanMessage(HARMFUL_PROMPT)]})["messages"][-1].content == COMPLIANT[0]


def test_middleware_output_check_async_and_raise(strict: LatentGuard) -> None:
    agent = create_agent(_fake(COMPLIANT[0]), tools=[],
                         middleware=[LatentGuardMiddleware(strict, check_output=True, refusal="No.")])
    state = asyncio.run(agent.ainvoke({"messages": [HumanMessage(HARMFUL_PROMPT)]}))
    assert state["messages"][-1].content == "No."
    raising = create_agent(_fake(COMPLIANT[0]), tools=[],
                           middleware=[LatentGuardMiddleware(strict, check_output=True, on_block="raise")])
    with pytest.raises(LatentGuardBlocked) as caught:
        raising.invoke({"messages": [HumanMessage(HARMFUL_PROMPT)]})
    assert caught.value.verdict.target == "response"


# ------------------------------------------------------------------------------------------- runnable

def test_runnable_judges_responses(guard: LatentGuard, strict: LatentGuard) -> None:
    check = LatentGuardRunnable(guard, target="response", output="verdict")
    one = check.invoke({"prompt": HARMFUL_PROMPT, "response": COMPLIANT[0]})
    assert isinstance(one, Verdict) and one.target == "response"
    assert one.score == pytest.approx(guard.check_response(HARMFUL_PROMPT, COMPLIANT[0]).score, abs=1e-5)
    many = check.batch([{"prompt": HARMFUL_PROMPT, "response": COMPLIANT[0]},
                        (HARMLESS_PROMPT, AIMessage(SAFE[2]))])
    assert [v.score for v in many] == pytest.approx(
        [v.score for v in guard.check_response_batch([HARMFUL_PROMPT, HARMLESS_PROMPT], [COMPLIANT[0], SAFE[2]])],
        abs=1e-5)
    assert asyncio.run(check.ainvoke((HARMFUL_PROMPT, COMPLIANT[0]))).score == pytest.approx(one.score, abs=1e-5)
    passing = LatentGuardRunnable(strict.with_settings(response_threshold=1e9), target="response")
    value: dict[str, Any] = {"prompt": HARMLESS_PROMPT, "response": SAFE[2]}
    assert passing.invoke(value) is value
    with pytest.raises(LatentGuardBlocked):
        LatentGuardRunnable(strict, target="response").invoke(value)
    outputs = LatentGuardRunnable(strict, target="response").batch([value, "no pair"], return_exceptions=True)
    assert isinstance(outputs[0], LatentGuardBlocked) and isinstance(outputs[1], InputError)


def test_runnable_target_is_checked() -> None:
    host = make_host("chatml")
    plain = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    with pytest.raises(ArtifactError):
        LatentGuardRunnable(plain, target="response")
    with pytest.raises(InputError):
        LatentGuardRunnable(plain, target="answer")  # type: ignore[arg-type]
