"""The failure policy, uniform in the core and the LangChain adapter: ``on_error`` block | allow | raise.

Every internal failure (non-finite states, any exception in the model work or the scorer) gives a verdict with
``status="error"`` and a reason code (or re-raises with ``on_error="raise"``), is logged with that code, and is
never cached: the next call on a healthy model is a normal verdict. Over-long input follows ``on_overflow``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from latent_guardrail.errors import InputError, NumericalError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import LatentGuardBlocked, guarded_generate
from latent_guardrail.hosts import Host
from latent_guardrail.integrations.langchain import (
    GuardedChatModel,
    LatentGuardMiddleware,
    LatentGuardRunnable,
    verdict_of,
)
from latent_guardrail.settings import GuardSettings
from latent_guardrail.verdict import Verdict
from tests.support.hooks import hook_ids
from tests.support.models import HARMFUL, HARMLESS

POLICIES = ("block", "allow", "raise")
HARMLESS_PROMPT = HARMLESS[0]
HARMFUL_PROMPT = HARMFUL[1]


class Faulty:
    """A copy of a host whose input embedding fails on demand (the fingerprint is the same as the original's).

    ``fault`` is ``None`` (healthy), ``"nan"`` (NaN hidden states) or an exception instance to raise.
    """

    def __init__(self, host: Host) -> None:
        model = copy.deepcopy(host.model)
        self.fault: str | BaseException | None = None
        embed = model.get_input_embeddings()
        original = embed.forward

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            if isinstance(self.fault, BaseException):
                raise self.fault
            out = original(*args, **kwargs)
            return out * math.nan if self.fault == "nan" else out

        embed.forward = forward  # type: ignore[method-assign]
        self.host = Host(model=model, tokenizer=host.tokenizer, name="tiny-faulty")


FAULTS: dict[str, tuple[Callable[[], str | BaseException], str, type[BaseException]]] = {
    "nan": (lambda: "nan", "non_finite_states", NumericalError),
    "runtime": (lambda: RuntimeError("CUDA out of memory (simulated)"), "internal_error:RuntimeError", RuntimeError),
    "value": (lambda: ValueError("bad shape (simulated)"), "internal_error:ValueError", ValueError),
    "index": (lambda: IndexError("index out of range (simulated)"), "internal_error:IndexError", IndexError),
}


@pytest.fixture(scope="module")
def guard(tiny_host: Host) -> LatentGuard:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    assert guard.check(HARMFUL_PROMPT).harmful and not guard.check(HARMLESS_PROMPT).harmful
    return guard


@pytest.fixture
def faulty(tiny_host: Host) -> Faulty:
    return Faulty(tiny_host)


def _reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(record, "reason", "") for record in caplog.records if record.name.startswith("latent_guardrail")]


# ---------------------------------------------------------------------------------------------------- core

@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("policy", POLICIES)
def test_core_applies_the_policy_to_every_failure(fault: str, policy: str, guard: LatentGuard, faulty: Faulty,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    make, reason, raised = FAULTS[fault]
    broken = LatentGuard(faulty.host, guard.fitted).with_settings(on_error=policy)
    hooks = hook_ids(faulty.host.model)
    faulty.fault = make()
    caplog.set_level(logging.WARNING, logger="latent_guardrail")
    if policy == "raise":
        with pytest.raises(raised):
            broken.check_batch([HARMLESS_PROMPT, HARMFUL_PROMPT])
    else:
        verdicts = broken.check_batch([HARMLESS_PROMPT, HARMFUL_PROMPT])
        for verdict in verdicts:
            assert (verdict.status, verdict.error) == ("error", reason)
            assert verdict.harmful is (policy == "block")
            assert math.isfinite(verdict.score) and verdict.threshold == broken.threshold
            assert verdict.fingerprint == broken.fingerprint
            assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict  # survives JSON
    assert reason in _reasons(caplog)  # logged with the reason code, whatever the policy
    assert hook_ids(faulty.host.model) == hooks


@pytest.mark.parametrize("fault", ["nan", "runtime", "value"])
def test_a_failure_is_never_cached(fault: str, guard: LatentGuard, faulty: Faulty) -> None:
    broken = LatentGuard(faulty.host, guard.fitted)
    for _ in range(2):
        faulty.fault = FAULTS[fault][0]()
        assert broken.check(HARMLESS_PROMPT).status == "error"
        faulty.fault = None
        healed = broken.check(HARMLESS_PROMPT)
        assert (healed.status, healed.error, healed.harmful) == ("ok", None, False)
        assert healed.score == pytest.approx(guard.check(HARMLESS_PROMPT).score, abs=1e-9)


def test_a_failing_scorer_follows_the_policy(guard: LatentGuard, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    local = LatentGuard(guard.host, copy.copy(guard.fitted))

    def broken_score(_states: torch.Tensor) -> Any:
        raise TypeError("scorer bug (simulated)")

    monkeypatch.setattr(local.fitted, "scorer", copy.copy(local.fitted.scorer))
    monkeypatch.setattr(local.fitted.scorer, "score", broken_score)
    caplog.set_level(logging.ERROR, logger="latent_guardrail")
    assert local.check(HARMLESS_PROMPT).error == "internal_error:TypeError"
    assert local.with_settings(on_error="allow").check(HARMFUL_PROMPT).harmful is False
    with pytest.raises(TypeError):
        local.with_settings(on_error="raise").check(HARMLESS_PROMPT)
    assert _reasons(caplog).count("internal_error:TypeError") == 3


def test_bad_input_is_not_a_failure(guard: LatentGuard, caplog: pytest.LogCaptureFixture) -> None:
    """Bad input is the caller's error: a typed InputError whatever on_error says, and nothing is logged."""
    caplog.set_level(logging.WARNING, logger="latent_guardrail")
    for policy in POLICIES:
        with pytest.raises(InputError):
            guard.with_settings(on_error=policy).check("   ")
    assert _reasons(caplog) == []


# ---------------------------------------------------------------------------------------------------- overflow

def test_overflow_truncates_by_default_and_blocks_when_asked(guard: LatentGuard,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    long = "please read this story. " * 40 + HARMLESS_PROMPT
    short = guard.with_settings(max_chars=60)
    cut = short.check(long)
    assert (cut.status, cut.truncated) == ("ok", True)
    assert cut.score == pytest.approx(short.check(long[-60:]).score, abs=1e-9)
    caplog.set_level(logging.WARNING, logger="latent_guardrail")
    strict = guard.with_settings(max_chars=60, on_overflow="block")
    verdicts = strict.check_batch([long, HARMLESS_PROMPT, long])
    assert [(v.status, v.error, v.harmful, v.truncated) for v in verdicts] == [
        ("error", "input_too_long", True, True), ("ok", None, False, False), ("error", "input_too_long", True, True)]
    assert verdicts[1].score == pytest.approx(guard.check(HARMLESS_PROMPT).score, abs=1e-5)
    assert _reasons(caplog).count("input_too_long") == 2
    allow = guard.with_settings(max_chars=60, on_overflow="block", on_error="allow")
    assert allow.check(long).harmful is True  # over-long input is not an internal failure: on_error does not apply


def test_token_overflow_blocks_too(guard: LatentGuard) -> None:
    long = "one two three four five six seven. " * 30 + HARMLESS_PROMPT
    strict = guard.with_settings(max_tokens=100, on_overflow="block")
    verdict = strict.check([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": long}])
    assert (verdict.error, verdict.harmful, verdict.truncated) == ("input_too_long", True, True)
    assert verdict.num_tokens is not None and verdict.num_tokens <= 100


def test_guarded_generation_honours_the_overflow_policy(guard: LatentGuard) -> None:
    long = "please read this story. " * 40 + HARMLESS_PROMPT
    result = guarded_generate(guard.with_settings(max_chars=60, on_overflow="block"), long, max_new_tokens=3)
    assert result.blocked and result.verdict.error == "input_too_long" and result.usage.output_tokens == 0
    answered = guarded_generate(guard.with_settings(max_chars=60), long, max_new_tokens=3)
    assert not answered.blocked and answered.verdict.truncated


def test_overflow_setting_is_validated() -> None:
    with pytest.raises(ValueError):
        GuardSettings(on_overflow="ignore")  # type: ignore[arg-type]
    assert GuardSettings().on_overflow == "truncate"


# ---------------------------------------------------------------------------------------------------- LangChain

@pytest.mark.parametrize("policy", POLICIES)
def test_runnable_applies_the_same_policy(policy: str, guard: LatentGuard, faulty: Faulty) -> None:
    broken = LatentGuard(faulty.host, guard.fitted).with_settings(on_error=policy)
    passing, judging = LatentGuardRunnable(broken), LatentGuardRunnable(broken, output="verdict")
    faulty.fault = RuntimeError("device lost (simulated)")

    def outcomes() -> list[Any]:
        out: list[Any] = []
        for call in (lambda: passing.invoke(HARMLESS_PROMPT), lambda: asyncio.run(passing.ainvoke(HARMLESS_PROMPT)),
                     lambda: passing.batch([HARMLESS_PROMPT, HARMLESS_PROMPT]),
                     lambda: asyncio.run(passing.abatch([HARMLESS_PROMPT])),
                     lambda: judging.invoke(HARMLESS_PROMPT)):
            try:
                out.append(call())
            except Exception as exc:  # collected and checked below
                out.append(exc)
        return out

    got = outcomes()
    if policy == "raise":
        assert all(isinstance(item, RuntimeError) and "device lost" in str(item) for item in got)
    elif policy == "block":
        assert all(isinstance(item, LatentGuardBlocked) for item in got[:4])
        verdicts = [item.verdict for item in got[:4]] + [got[4]]
        assert all((v.status, v.error, v.harmful) == ("error", "internal_error:RuntimeError", True) for v in verdicts)
    else:
        assert got[:4] == [HARMLESS_PROMPT, HARMLESS_PROMPT, [HARMLESS_PROMPT] * 2, [HARMLESS_PROMPT]]
        assert isinstance(got[4], Verdict) and (got[4].status, got[4].harmful) == ("error", False)
    faulty.fault = None  # healed: the next calls are normal verdicts, nothing was cached
    assert passing.invoke(HARMLESS_PROMPT) == HARMLESS_PROMPT
    assert judging.invoke(HARMLESS_PROMPT).status == "ok"


@pytest.mark.parametrize("policy", POLICIES)
def test_middleware_applies_the_same_policy(policy: str, guard: LatentGuard, faulty: Faulty) -> None:
    from langchain_core.messages import HumanMessage

    broken = LatentGuard(faulty.host, guard.fitted).with_settings(on_error=policy)
    middleware = LatentGuardMiddleware(broken)
    state: Any = {"messages": [HumanMessage(HARMLESS_PROMPT)]}
    faulty.fault = "nan"
    if policy == "raise":
        with pytest.raises(NumericalError):
            middleware.before_agent(state, None)  # type: ignore[arg-type]
    else:
        update = middleware.before_agent(state, None)  # type: ignore[arg-type]
        if policy == "allow":
            assert update is None
        else:
            assert update is not None and update["jump_to"] == "end"
            verdict = verdict_of(update["messages"][0])
            assert verdict is not None and verdict.error == "non_finite_states"
    faulty.fault = None
    assert middleware.before_agent(state, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", POLICIES)
def test_chat_model_applies_the_same_policy_to_a_scorer_failure(policy: str, guard: LatentGuard,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    local = LatentGuard(guard.host, copy.copy(guard.fitted)).with_settings(on_error=policy)
    monkeypatch.setattr(local.fitted, "scorer", copy.copy(local.fitted.scorer))

    def broken_score(_states: torch.Tensor) -> Any:
        raise RuntimeError("scorer lost (simulated)")

    monkeypatch.setattr(local.fitted.scorer, "score", broken_score)
    llm = GuardedChatModel(local, max_new_tokens=3)
    if policy == "raise":
        with pytest.raises(RuntimeError, match="scorer lost"):
            llm.invoke(HARMLESS_PROMPT)
        return
    message = llm.invoke(HARMLESS_PROMPT)
    verdict = verdict_of(message)
    assert verdict is not None and (verdict.status, verdict.error) == ("error", "internal_error:RuntimeError")
    assert message.response_metadata["blocked"] is (policy == "block")
    if policy == "allow":  # the answer comes from the same prefill
        assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_chat_model_applies_the_same_policy_to_a_failed_pass(policy: str, guard: LatentGuard,
                                                             faulty: Faulty) -> None:
    """Any exception in the guarded prefill follows on_error; 'allow' has no pass to answer from: a typed error."""
    from latent_guardrail.errors import LatentGuardError

    llm = GuardedChatModel(LatentGuard(faulty.host, guard.fitted).with_settings(on_error=policy), max_new_tokens=3)
    hooks = hook_ids(faulty.host.model)
    faulty.fault = ValueError("bad shape (simulated)")
    if policy == "block":
        message = llm.invoke(HARMLESS_PROMPT)
        verdict = verdict_of(message)
        assert verdict is not None and verdict.error == "internal_error:ValueError"
        assert message.response_metadata["blocked"] is True
    else:
        with pytest.raises(ValueError if policy == "raise" else LatentGuardError):
            llm.invoke(HARMLESS_PROMPT)
    assert hook_ids(faulty.host.model) == hooks
    faulty.fault = None
    assert verdict_of(llm.invoke(HARMLESS_PROMPT)).status == "ok"  # type: ignore[union-attr]
