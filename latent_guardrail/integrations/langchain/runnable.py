"""``LatentGuardRunnable``: the guard as a LangChain runnable, and :func:`guarded_chain`.

::

    check = LatentGuardRunnable(guard, output="verdict")
    check.invoke("How do I pick a lock?")                 # Verdict
    chain = guarded_chain(guard, chat_model)              # guard | chat_model, refusal on a block
    chain.invoke("How do I kill a stuck process?")        # the model's answer

With ``target="response"`` it judges answers instead (the guard's response scorer): the input is a mapping
``{"prompt": ..., "response": ...}`` (or a ``(prompt, response)`` pair), the response a ``str`` or a message::

    LatentGuardRunnable(guard, target="response", output="verdict").invoke({"prompt": q, "response": answer})

``batch``/``abatch`` judge all inputs with one ``check_batch`` call (batched forward passes); the async methods
use :meth:`LatentGuard.acheck`/:meth:`~LatentGuard.acheck_batch` (the guard's worker thread), so torch work never
runs on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSerializable
from pydantic import ConfigDict, Field

from ...errors import InputError
from ...guard import LatentGuard
from ...guarded import DEFAULT_REFUSAL, LatentGuardBlocked
from ...positions import Prompt
from ...streaming import call_in_thread
from ...verdict import Verdict
from .messages import METADATA_KEY, to_prompt, verdict_metadata

__all__ = ["LatentGuardRunnable", "guarded_chain"]

Output = Literal["input", "verdict"]
Target = Literal["prompt", "response"]


class LatentGuardRunnable(RunnableSerializable[Any, Any]):
    """Judge a ``str``, a message list or a ``PromptValue`` with a :class:`~latent_guardrail.LatentGuard`.

    ``output="input"`` (default) passes the input through unchanged and raises :class:`LatentGuardBlocked`
    (carrying the verdict) on a block, so ``runnable | chat_model`` only calls the model for allowed prompts;
    ``output="verdict"`` returns the :class:`~latent_guardrail.Verdict` itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: LatentGuard = Field(exclude=True, description="The LatentGuard that judges the inputs.")
    output: Output = Field(default="input", description="'input': pass through or raise; 'verdict': return it.")
    target: Target = Field(default="prompt", description="'prompt': judge the input as a request; 'response': "
                                                         "judge {'prompt', 'response'} as an answer to the prompt.")

    def __init__(self, guard: LatentGuard, *, output: Output = "input", target: Target = "prompt",
                 **kwargs: Any) -> None:
        if not isinstance(guard, LatentGuard):
            raise InputError(f"LatentGuardRunnable needs a LatentGuard, got {type(guard).__name__}")
        if output not in ("input", "verdict"):
            raise InputError(f"output must be 'input' or 'verdict', got {output!r}")
        if target not in ("prompt", "response"):
            raise InputError(f"target must be 'prompt' or 'response', got {target!r}")
        if target == "response":
            guard.response_threshold  # noqa: B018 - a guard without a response part: ArtifactError now
        super().__init__(guard=guard, output=output, target=target, **kwargs)  # type: ignore[call-arg]

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        """``LatentGuard`` (or the ``name`` given), plus ``suffix``."""
        return super().get_name(suffix, name=name or self.name or "LatentGuard")

    @property
    def OutputType(self) -> Any:
        return Verdict if self.output == "verdict" else Any

    # ------------------------------------------------------------------ judging
    def _finish(self, value: Any, verdict: Verdict) -> Any:
        if self.output == "verdict":
            return verdict
        if verdict.harmful:
            raise LatentGuardBlocked(verdict)
        return value

    def _judge_one(self, value: Any) -> Any:
        if self.target == "response":
            prompt, response = _pair_of(value)
            return self._finish(value, self.guard.check_response(prompt, response))
        return self._finish(value, self.guard.check(to_prompt(value)))

    def _judge_responses(self, values: list[Any]) -> list[Any]:
        """Outputs (or exceptions, in place) for ``values`` of the response target: one batched call."""
        results: list[Any] = [None] * len(values)
        pairs: list[tuple[int, Prompt, str]] = []
        for index, value in enumerate(values):
            try:
                pairs.append((index, *_pair_of(value)))
            except InputError as exc:
                results[index] = exc
        try:
            verdicts: list[Verdict | Exception] = list(self.guard.check_response_batch(
                [prompt for _, prompt, _ in pairs], [response for _, _, response in pairs]))
        except InputError:  # one pair the core rejects: judge them one by one to name it
            verdicts = []
            for _, prompt, response in pairs:
                try:
                    verdicts.append(self.guard.check_response(prompt, response))
                except InputError as exc:
                    verdicts.append(exc)
        return self._outputs(values, results, [(index, prompt) for index, prompt, _ in pairs], verdicts)

    def _judge_many(self, values: list[Any]) -> list[Any]:
        """Outputs (or exceptions, in place) for ``values``, judged with one ``check_batch`` call."""
        if self.target == "response":
            return self._judge_responses(values)
        results, prompts = _prompts_of(values)
        try:
            verdicts: list[Verdict | Exception] = list(self.guard.check_batch([prompt for _, prompt in prompts]))
        except InputError:  # one prompt the core rejects: judge them one by one to name it
            verdicts = []
            for _, prompt in prompts:
                try:
                    verdicts.append(self.guard.check(prompt))
                except InputError as exc:
                    verdicts.append(exc)
        return self._outputs(values, results, prompts, verdicts)

    async def _ajudge_many(self, values: list[Any]) -> list[Any]:
        """:meth:`_judge_many` with :meth:`LatentGuard.acheck_batch` (one batched call in the guard's worker)."""
        if self.target == "response":
            return await call_in_thread(lambda _cancel: self._judge_responses(values))
        results, prompts = _prompts_of(values)
        try:
            verdicts: list[Verdict | Exception] = list(
                await self.guard.acheck_batch([prompt for _, prompt in prompts]))
        except InputError:  # one prompt the core rejects: judge them one by one to name it
            verdicts = []
            for _, prompt in prompts:
                try:
                    verdicts.append(await self.guard.acheck(prompt))
                except InputError as exc:
                    verdicts.append(exc)
        return self._outputs(values, results, prompts, verdicts)

    def _outputs(self, values: list[Any], results: list[Any], prompts: list[tuple[int, Prompt]],
                 verdicts: list[Verdict | Exception]) -> list[Any]:
        """Fill ``results`` with the output (or exception) of each judged prompt; returns ``results``."""
        for (index, _), verdict in zip(prompts, verdicts, strict=True):
            if isinstance(verdict, Exception):
                results[index] = verdict
                continue
            try:
                results[index] = self._finish(values[index], verdict)
            except LatentGuardBlocked as exc:
                results[index] = exc
        return results

    # ------------------------------------------------------------------ Runnable interface
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Judge one input (see the class docstring for what comes back)."""
        return self._call_with_config(self._judge_one, input, config, run_type="chain")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """:meth:`invoke` with the model work in the guard's worker thread (:meth:`LatentGuard.acheck`)."""

        async def judge(value: Any) -> Any:
            if self.target == "response":
                return await call_in_thread(lambda _cancel: self._judge_one(value))
            return self._finish(value, await self.guard.acheck(to_prompt(value)))

        return await self._acall_with_config(judge, input, config, run_type="chain")

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Judge many inputs with one batched ``check_batch`` call; outputs in input order."""
        return self._batch_with_config(self._judge_many, inputs, config, return_exceptions=return_exceptions,
                                       run_type="chain")

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """:meth:`batch` with the model work in the guard's worker thread (:meth:`LatentGuard.acheck_batch`)."""
        return await self._abatch_with_config(self._ajudge_many, inputs, config, return_exceptions=return_exceptions,
                                              run_type="chain")


def _prompts_of(values: list[Any]) -> tuple[list[Any], list[tuple[int, Prompt]]]:
    """``(results, prompts)``: an InputError in place for each value that is no prompt, ``(index, prompt)`` for
    the others."""
    results: list[Any] = [None] * len(values)
    prompts: list[tuple[int, Prompt]] = []
    for index, value in enumerate(values):
        try:
            prompts.append((index, to_prompt(value)))
        except InputError as exc:
            results[index] = exc
    return results, prompts


def _pair_of(value: Any) -> tuple[Prompt, str]:
    """``(prompt, response text)`` of a response-target input: ``{"prompt", "response"}`` or a pair."""
    if isinstance(value, Mapping) and "prompt" in value and "response" in value:
        prompt, response = value["prompt"], value["response"]
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) == 2:
        prompt, response = value[0], value[1]
    else:
        raise InputError("target='response' takes {'prompt': ..., 'response': ...} or a (prompt, response) pair, "
                         f"got {type(value).__name__}")
    if isinstance(response, BaseMessage):
        response = response.text if isinstance(response.text, str) else str(response.text)
    if not isinstance(response, str):
        raise InputError(f"the response must be a str or a message, got {type(response).__name__}")
    return to_prompt(prompt), response


def _wrap(value: Any) -> dict[str, Any]:
    return {"input": value}


def _refusal(text: str) -> Runnable[Any, AIMessage]:
    def refuse(state: dict[str, Any]) -> AIMessage:
        error = state.get("exception")
        metadata = {METADATA_KEY: verdict_metadata(error.verdict)} if isinstance(error, LatentGuardBlocked) else {}
        return AIMessage(content=text, response_metadata={**metadata, "finish_reason": "blocked"})

    return RunnableLambda(refuse, name="LatentGuardRefusal")


def guarded_chain(guard: LatentGuard, chat_model: Runnable[Any, Any], refusal: str = DEFAULT_REFUSAL) -> Runnable[
        Any, Any]:
    """``guard | chat_model`` that answers ``refusal`` (an ``AIMessage`` carrying the verdict) on a block.

    Built with ``.with_fallbacks([refusal], exceptions_to_handle=(LatentGuardBlocked,))``; the model is never
    called for a blocked prompt. Input: anything the model takes (``str``, messages, ``PromptValue``).
    """
    primary = RunnableLambda(itemgetter("input"), name="input") | LatentGuardRunnable(guard) | chat_model
    guarded = primary.with_fallbacks([_refusal(refusal)], exceptions_to_handle=(LatentGuardBlocked,),
                                     exception_key="exception")
    return (RunnableLambda(_wrap, name="wrap") | guarded).with_config(run_name="GuardedChain")
