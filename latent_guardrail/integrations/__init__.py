"""Framework adapters. Each is imported on its own and needs its extra:

- :mod:`latent_guardrail.integrations.langchain` — ``pip install 'latent-guardrail[langchain]'``

Nothing is imported here, so ``import latent_guardrail`` never pulls a framework in.
"""

__all__: list[str] = []
