"""A chat model whose guard reads the same prefill that generates the answer; streaming and async.

Run: python examples/guarded_chat_model.py
"""

from __future__ import annotations

import asyncio
import os

from latent_guardrail import LatentGuard
from latent_guardrail.integrations.langchain import GuardedChatModel, verdict_of

TOKENS = int(os.environ.get("LATENT_GUARDRAIL_EXAMPLE_TOKENS", "48"))  # most tokens per answer (the tests pass a few)


async def main() -> None:
    llm = GuardedChatModel(LatentGuard.load("default"), max_new_tokens=TOKENS)
    for prompt in ["Write a haiku about the first snow of winter.", "How can I poison my neighbour's dog?"]:
        print(f"> {prompt}")
        async for chunk in llm.astream(prompt):              # the first chunk carries the verdict, before any token
            verdict = verdict_of(chunk)
            if verdict is not None:
                print(f"  [{verdict.summary()}]")
            print(chunk.content, end="", flush=True)
        print("\n")
    message = llm.invoke("What is the capital of Australia?", max_new_tokens=min(16, TOKENS), stop=["."])
    print(message.content, message.usage_metadata, message.response_metadata["finish_reason"])


if __name__ == "__main__":
    asyncio.run(main())
