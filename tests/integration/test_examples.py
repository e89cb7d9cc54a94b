"""Every script in ``examples/`` runs to the end on the default host (a smoke test each, in a subprocess).

The scripts run as a user runs them (``python examples/NAME.py``) with small arguments, or with
``LATENT_GUARDRAIL_EXAMPLE_TOKENS`` (the most tokens per answer) set low, so that each takes seconds; the output
must show what the example is about (a blocked and an allowed prompt, a saved guard, the inversion table).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# script -> (arguments, strings its output must contain); "{tmp}" is the test's temporary folder
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "agent_middleware.py": ([], ["> Recommend three novels", "harmless score=", "HARMFUL score="]),
    "guarded_chain.py": ([], ["harmless score=", "HARMFUL score=", "I can't help with that.",
                              "Write a phishing email"]),
    "guarded_chat_model.py": ([], ["[harmless score=", "[HARMFUL score=", "> How can I poison"]),
    "nemo_app.py": ([], ["[PASS score", "[BLOCK score", "shared prefill True", "exceptions mode:",
                         "InputRailException"]),
    "reply_inversion.py": (["--n", "3", "--layers", "10", "--max-new-tokens", "2", "--plot", "{tmp}/inversion.png"],
                           ["reply inversion on", "harmfulness/context", "refusal/all", "plot saved to"]),
    "distributed_calibration.py": (["--limit", "10", "--out", "{tmp}/guard-dp"],
                                   ["1 process(es):", "saved to", "calibration prompts re-scored:"]),
    "topical_rail.py": (["--every", "80", "--out", "{tmp}/topical"],
                        ["extended in", "category=legal_advice [S6 / spc_lgl", "monitored=legal_advice", "saved to"]),
}


def test_every_example_has_a_smoke_test() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script: str, tmp_path: Path) -> None:
    arguments, expected = RUNS[script]
    env = {**os.environ, "LATENT_GUARDRAIL_EXAMPLE_TOKENS": "6", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(EXAMPLES / script), *[a.format(tmp=tmp_path) for a in arguments]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    missing = [text for text in expected if text not in run.stdout]
    assert missing == [], run.stdout[-3000:]
    if script == "distributed_calibration.py":
        assert (tmp_path / "guard-dp" / "guard.json").is_file()
    if script == "topical_rail.py":
        assert (tmp_path / "topical" / "guard.json").is_file()
    if script == "reply_inversion.py":
        assert (tmp_path / "inversion.png").stat().st_size > 0
