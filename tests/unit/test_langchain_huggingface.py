"""Sharing weights with a real langchain-huggingface ChatHuggingFace / HuggingFacePipeline (one copy in memory)."""

from __future__ import annotations

import transformers
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

from latent_guardrail import LatentGuard
from latent_guardrail.integrations.langchain import host_from_langchain
from tests.support.models import HARMFUL, HARMLESS, make_host


def test_guard_built_from_chat_huggingface_reuses_model_and_tokenizer() -> None:
    tiny = make_host()
    pipe = transformers.pipeline("text-generation", model=tiny.model, tokenizer=tiny.tokenizer, max_new_tokens=2)
    llm = HuggingFacePipeline(pipeline=pipe)
    chat = ChatHuggingFace(llm=llm, tokenizer=tiny.tokenizer, model_id="tiny")
    host = host_from_langchain(chat)
    assert host.model is tiny.model and host.tokenizer is tiny.tokenizer
    assert host_from_langchain(llm) is host                 # same weights → same Host (one lock)
    guard = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="paper", progress=False)
    assert guard.host.model is pipe.model
    verdict = guard.check(HARMFUL[0])
    assert verdict.fingerprint == guard.fingerprint
    assert isinstance(chat.invoke("hello").content, str)   # the shared model still serves LangChain
