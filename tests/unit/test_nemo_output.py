"""The output rail ``latent guard check output`` in real ``LLMRails`` apps (Colang 1.0 and 2.x) on a tiny scripted
host: with the latent main LLM's output check the rail reuses the generation's verdict (no extra pass), otherwise
it runs one pass; the drop-in configs name the flow, and the Colang 1.0 one runs it on streamed answers too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.actions.rail_outcome import RailOutcome

from latent_guardrail.guard import LatentGuard
from latent_guardrail.guarded import DEFAULT_REFUSAL
from latent_guardrail.integrations.nemo import LatentHostModel, NemoConfigError, rail_path, register
from latent_guardrail.integrations.nemo.actions import latent_guard_check_output
from latent_guardrail.integrations.nemo.provider import OutputVerdicts
from tests.support.hooks import count_passes
from tests.support.models import HARMFUL, HARMLESS, make_host
from tests.support.responses import COMPLIANT, HARMFUL_PROMPT, HARMLESS_ANSWER, HARMLESS_PROMPT, make_response_guard

pytestmark = pytest.mark.filterwarnings("ignore:Use 'nim_base_url':DeprecationWarning")

REFUSAL = "I'm sorry, I can't respond to that."
REPO = Path(__file__).resolve().parents[2]
OUTPUT_FLOW = "latent guard check output"

MAIN_V2 = """
import core
import guardrails

flow main
  activate answer with the main llm

flow input rails $input_text
  latent guard check input

flow output rails $output_text
  latent guard check output

flow answer with the main llm
  global $user_message
  user said something
  $bot_message = await PassthroughLLMAction(user_message=$user_message)
  bot say $bot_message
"""


@pytest.fixture(scope="module")
def guard() -> LatentGuard:
    return make_response_guard()


def _app(guard: LatentGuard, llm: Any, *, colang: str = "1.0") -> LLMRails:
    lines = [f'colang_version: "{colang}"', f"import_paths: [{json.dumps(rail_path())}]", "passthrough: true",
             "custom_data: {latent_guard: {guard: null}}"]
    if colang == "1.0":
        lines.append(f"rails: {{input: {{flows: [latent guard check input]}}, output: {{flows: [{OUTPUT_FLOW}]}}}}")
    config = RailsConfig.from_content(yaml_content="\n".join(lines) + "\n",
                                      colang_content=MAIN_V2 if colang == "2.x" else None)
    app = LLMRails(config, llm=llm)
    register(app, guard)
    return app


@contextmanager
def prefills(model: torch.nn.Module) -> Iterator[list[int]]:
    """Lengths of the passes over more than one token (prefills and one-pass checks)."""
    with count_passes(model) as lengths:
        yield lengths
    lengths[:] = [length for length in lengths if length > 1]


def _ask(app: LLMRails, text: str) -> Any:
    return asyncio.run(app.generate_async(messages=[{"role": "user", "content": text}],
                                          options={"log": {"activated_rails": True}}))


def _output_outcome(response: Any) -> RailOutcome:
    (rail,) = [rail for rail in response.log.activated_rails if rail.name == OUTPUT_FLOW]
    outcome = rail.executed_actions[0].return_value
    assert isinstance(outcome, RailOutcome)
    return outcome


@pytest.mark.parametrize("colang", ["1.0", "2.x"])
def test_output_rail_reuses_the_generations_verdict(guard: LatentGuard, colang: str) -> None:
    strict = guard.with_settings(threshold=1e9, response_threshold=-1e9)   # prompts pass, every answer stops
    app = _app(strict, LatentHostModel(strict, max_new_tokens=40, check_output=True), colang=colang)
    with prefills(strict.host.model) as lengths:
        response = _ask(app, HARMFUL_PROMPT) if colang == "1.0" else asyncio.run(
            app.generate_async(messages=[{"role": "user", "content": HARMFUL_PROMPT}]))
    assert len(lengths) == 1  # the one prefill: the answer's own steps judged it, the rail reused that
    if colang == "1.0":
        assert response.response[-1]["content"] == REFUSAL
        outcome = _output_outcome(response)
        assert outcome.is_blocked and outcome.metadata["shared_prefill"] is True
        assert outcome.metadata["target"] == "response"
    else:
        assert response["content"] == REFUSAL


def test_output_rail_runs_one_pass_without_the_generations_check(guard: LatentGuard) -> None:
    lenient = guard.with_settings(threshold=1e9, response_threshold=1e9)
    app = _app(lenient, LatentHostModel(lenient, max_new_tokens=60))
    with prefills(lenient.host.model) as lengths:
        response = _ask(app, HARMLESS_PROMPT)
    assert response.response[-1]["content"] == HARMLESS_ANSWER
    assert len(lengths) == 2  # the answer's prefill and the rail's one pass over prompt + answer
    outcome = _output_outcome(response)
    assert not outcome.is_blocked and outcome.metadata["shared_prefill"] is False
    expected = lenient.check_response(HARMLESS_PROMPT, HARMLESS_ANSWER).score
    assert outcome.metadata["score"] == pytest.approx(expected, abs=1e-4)
    strict = guard.with_settings(threshold=1e9, response_threshold=-1e9)
    blocked = _ask(_app(strict, LatentHostModel(strict, max_new_tokens=60)), HARMLESS_PROMPT)
    assert blocked.response[-1]["content"] == REFUSAL and _output_outcome(blocked).is_blocked


def test_the_action_fails_closed_and_defines_its_edge_cases(guard: LatentGuard) -> None:
    assert asyncio.run(latent_guard_check_output(text="x", user_text="y")).is_blocked  # no rail registered
    # what NeMo's streamed output rails pass besides context, config and llm: taken, never a TypeError
    streamed = asyncio.run(latent_guard_check_output(context={"bot_message": "x", "user_message": "y"},
                                                     llm_task_manager=None, model_name="x", llms={}))
    assert streamed.is_blocked and streamed.metadata["error"] == "not_registered"
    app = _app(guard, LatentHostModel(guard, max_new_tokens=4))
    rail = app.runtime.registered_action_params["latent_guard_rail"]
    empty = asyncio.run(rail.check_output("  ", HARMFUL_PROMPT))
    assert not empty.is_blocked
    missing_user = asyncio.run(rail.check_output(COMPLIANT[0], None))
    assert missing_user.is_blocked and missing_user.metadata["status"] == "error"


def test_output_verdicts_are_taken_once(guard: LatentGuard) -> None:
    store = OutputVerdicts(ttl=60)
    verdict = guard.check_response(HARMFUL_PROMPT, COMPLIANT[0])
    store.put(HARMFUL_PROMPT, COMPLIANT[0] + " ", verdict)
    store.put(HARMFUL_PROMPT, "other", guard.check(HARMFUL_PROMPT))  # a prompt verdict is never stored
    assert len(store) == 1
    assert store.take(HARMFUL_PROMPT, COMPLIANT[0]) == verdict
    assert store.take(HARMFUL_PROMPT, COMPLIANT[0]) is None


def test_output_flow_or_check_output_without_a_response_part_is_a_config_error() -> None:
    host = make_host("chatml")
    plain = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    with pytest.raises(NemoConfigError, match="response part"):
        _app(plain, LatentHostModel(plain, max_new_tokens=4))
    with pytest.raises(NemoConfigError, match="response part"):
        LatentHostModel(plain, check_output=True)


def test_the_drop_in_configs_run_the_output_rail() -> None:
    v1 = yaml.safe_load((REPO / "integrations/nemoguardrails/config.yml").read_text())
    assert v1["rails"]["output"]["flows"] == [OUTPUT_FLOW]
    streaming = v1["rails"]["output"]["streaming"]
    assert streaming["enabled"] is True and streaming["stream_first"] is False   # judged before it is sent
    assert streaming["chunk_size"] > v1["models"][0]["parameters"]["max_new_tokens"]  # one window per answer
    assert v1["models"][0]["parameters"]["check_output"] is True
    v2 = yaml.safe_load((REPO / "integrations/nemoguardrails_colang2/config.yml").read_text())
    assert v2["models"][0]["parameters"]["check_output"] is True
    assert OUTPUT_FLOW in (REPO / "integrations/nemoguardrails_colang2/main.co").read_text()
    for folder in ("nemoguardrails", "nemoguardrails_colang2"):
        config = RailsConfig.from_path(str(REPO / "integrations" / folder))
        assert config is not None


def _drop_in_app(guard: LatentGuard, llm: LatentHostModel) -> LLMRails:
    """The Colang 1.0 drop-in config (its rails, flows and streaming section) on the tiny host instead of the
    default one."""
    config = RailsConfig.from_path(str(REPO / "integrations/nemoguardrails"))
    config = config.model_copy(update={"models": [], "custom_data": {"latent_guard": {"guard": None}}})
    app = LLMRails(config, llm=llm)
    register(app, guard)
    return app


class OutputCalls:
    """The texts the app's rail judged as answers and its outcomes (wraps the rail's ``check_output``)."""

    def __init__(self, app: LLMRails) -> None:
        self.seen: list[tuple[str, RailOutcome]] = []
        rail = app.runtime.registered_action_params["latent_guard_rail"]
        check = rail.check_output

        async def recorded(text: Any, user_text: Any, **kwargs: Any) -> RailOutcome:
            outcome = await check(text, user_text, **kwargs)
            self.seen.append((text, outcome))
            return outcome

        rail.check_output = recorded


def _stream(app: LLMRails, text: str) -> list[str]:
    async def collect() -> list[str]:
        return [chunk async for chunk in app.stream_async(messages=[{"role": "user", "content": text}])]
    return asyncio.run(collect())


def _error(chunk: str) -> dict[str, Any] | None:
    """The error frame NeMo ends a stream with, or None for an answer chunk."""
    try:
        found = json.loads(chunk)
    except json.JSONDecodeError:
        return None
    return found.get("error") if isinstance(found, dict) else None


def test_the_drop_in_config_streams_a_harmless_answer_through_the_output_rail(guard: LatentGuard) -> None:
    lenient = guard.with_settings(threshold=1e9, response_threshold=1e9)
    app = _drop_in_app(lenient, LatentHostModel(lenient, max_new_tokens=60))
    calls = OutputCalls(app)
    assert _ask(app, HARMLESS_PROMPT).response[-1]["content"] == HARMLESS_ANSWER
    assert [text for text, _ in calls.seen] == [HARMLESS_ANSWER]
    calls.seen.clear()
    chunks = _stream(app, HARMLESS_PROMPT)
    assert not any(_error(chunk) for chunk in chunks), chunks
    assert "".join(chunks) == HARMLESS_ANSWER
    # NeMo runs the flow on the passthrough answer and the streamed rail on the buffered answer (one window)
    assert [text for text, _ in calls.seen] == [HARMLESS_ANSWER] * 2
    assert not any(outcome.is_blocked for _, outcome in calls.seen)


def test_the_drop_in_config_blocks_an_answer_streamed_or_not(guard: LatentGuard) -> None:
    strict = guard.with_settings(threshold=1e9, response_threshold=-1e9)   # prompts pass, every answer blocks
    app = _drop_in_app(strict, LatentHostModel(strict, max_new_tokens=60))
    assert _ask(app, HARMLESS_PROMPT).response[-1]["content"] == REFUSAL   # the flow's refusal
    chunks = _stream(app, HARMLESS_PROMPT)
    # stream_first: false: nothing of the blocked answer is sent, the stream is NeMo's content_blocked frame
    assert len(chunks) == 1, chunks
    error = _error(chunks[0])
    assert error is not None and error["code"] == "content_blocked" and error["param"] == OUTPUT_FLOW


def test_the_drop_in_config_streams_the_hosts_refusal_of_an_answer_it_stopped(guard: LatentGuard) -> None:
    open_prompts = guard.with_settings(threshold=1e9)   # the fitted response threshold judges the answers
    app = _drop_in_app(open_prompts, LatentHostModel(open_prompts, max_new_tokens=60, check_output=True))
    calls = OutputCalls(app)
    assert _ask(app, HARMFUL_PROMPT).response[-1]["content"] == REFUSAL
    (text, outcome), = calls.seen
    assert text == DEFAULT_REFUSAL and outcome.is_blocked and outcome.metadata["shared_prefill"] is True
    chunks = _stream(app, HARMFUL_PROMPT)
    assert not any(_error(chunk) for chunk in chunks), chunks
    assert "".join(chunks) == DEFAULT_REFUSAL   # the compliant answer was stopped before any of it was streamed
