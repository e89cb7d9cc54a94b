"""Builds the topical guard (the default guard + a legal_advice category) on first use, then installs the rail."""

import logging
from pathlib import Path
from typing import Any

from latent_guardrail import LatentGuard
from latent_guardrail.datasets import read_prompts
from latent_guardrail.integrations.nemo import register

HERE = Path(__file__).resolve().parent
GUARD = HERE / "legal-guard"
DATA = HERE.parents[2] / "examples" / "data" / "legal_advice.jsonl"


def build_guard(folder: Path = GUARD, every: int | None = None) -> Path:
    """Extend the default guard with the legal_advice questions and save it to ``folder``."""
    guard = LatentGuard.load("default", progress=False)
    return guard.extend({"legal_advice": read_prompts(DATA)}, every=every, progress=False).save(folder)


def init(app: Any) -> None:
    """Build the guard when missing, then validate ``custom_data.latent_guard`` and register the rail."""
    if not (GUARD / "guard.json").is_file():
        logging.getLogger(__name__).warning("building the topical guard in %s (first use)", GUARD)
        build_guard()
    register(app)
