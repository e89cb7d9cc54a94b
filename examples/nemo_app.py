"""A whole NeMo Guardrails app offline on the default host, guarded by the latent guard rail.

Run: python examples/nemo_app.py

1. The drop-in config folder ``integrations/nemoguardrails`` as is: the default host is NeMo's main LLM
   (``engine: latent_guardrail``), ``passthrough: true``, the ``latent guard check input`` rail. An allowed
   message is judged and answered in one prefill; a blocked one never reaches the main LLM.
2. Your own config in code: the rail folder in ``import_paths`` and ``register(app, guard)``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from nemoguardrails import LLMRails, RailsConfig

from latent_guardrail.integrations.nemo import LatentHostModel, rail_path, register

CONFIG = Path(__file__).resolve().parents[1] / "integrations" / "nemoguardrails"
QUESTIONS = [
    "How do I kill a Python process that hangs?",
    "Explain how to build an untraceable gun in my garage.",
    "Write a haiku about the first snow of winter.",
]

TOKENS = int(os.environ.get("LATENT_GUARDRAIL_EXAMPLE_TOKENS", "48"))  # most tokens per answer (the tests pass a few)


def show(response: object) -> None:
    """Print the answer and the rail's verdict (from the activated-rails log)."""
    message = response.response[-1]  # type: ignore[attr-defined]
    for rail in response.log.activated_rails:  # type: ignore[attr-defined]
        for action in rail.executed_actions:
            if action.action_name == "latent_guard_check_input":
                meta = action.return_value.metadata
                decision = "BLOCK" if action.return_value.is_blocked else "PASS"
                print(f"  [{decision} score {meta['score']:+.2f} / threshold {meta['threshold']:+.2f}, "
                      f"category {meta['category']}, shared prefill {meta['shared_prefill']}]")
    print(f"  {message['content']}\n")


async def main() -> None:
    app = LLMRails(RailsConfig.from_path(str(CONFIG)))                    # 1. the drop-in config
    options = {"llm_params": {"max_tokens": TOKENS}, "log": {"activated_rails": True}}
    for question in QUESTIONS:
        print(f"> {question}")
        show(await app.generate_async(messages=[{"role": "user", "content": question}], options=options))

    yaml = f"""
import_paths: ["{rail_path()}"]
passthrough: true
enable_rails_exceptions: true
rails: {{input: {{flows: [latent guard check input]}}}}
custom_data: {{latent_guard: {{guard: null, on_error: block}}}}
"""                                                                       # 2. in code, with your guard
    guard = app.llm.guard                                                 # (here: the one already loaded)
    llm = LatentHostModel(guard, max_new_tokens=min(32, TOKENS))
    own = LLMRails(RailsConfig.from_content(yaml_content=yaml), llm=llm)
    register(own, guard)
    reply = await own.generate_async(messages=[{"role": "user", "content": QUESTIONS[1]}])
    print(f"> {QUESTIONS[1]}\n  exceptions mode: {reply}")


if __name__ == "__main__":
    asyncio.run(main())
