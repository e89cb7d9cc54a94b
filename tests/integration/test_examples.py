"""Every script in ``examples/`` runs to the end on the default host (a smoke test each, in a process of its own).

The scripts run as a user runs them (``python examples/NAME.py``: ``__main__``, its own ``argv``, working folder
and output) with small arguments, or with ``LATENT_GUARDRAIL_EXAMPLE_TOKENS`` (the most tokens per answer) set
low, so that each takes seconds; the output must show what the example is about (a blocked and an allowed prompt,
a saved guard, the inversion table). To spare each script the ~10 s of importing torch, transformers and the
frameworks, one interpreter imports them and forks a child per script (``tests/support/run_examples.py``).
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str, str]]:
    """Every example run once: script -> (its folder, exit code, stdout, stderr)."""
    root = tmp_path_factory.mktemp("examples")
    specs = []
    for script, (arguments, _) in sorted(RUNS.items()):
        folder = root / script.removesuffix(".py")
        folder.mkdir()
        specs.append({"script": str(EXAMPLES / script), "args": [a.format(tmp=folder) for a in arguments],
                      "cwd": str(folder), "stdout": str(folder / "stdout.txt"), "stderr": str(folder / "stderr.txt"),
                      "timeout": 600})
    spec = root / "spec.json"
    spec.write_text(json.dumps(specs), encoding="utf-8")
    env = {**os.environ, "LATENT_GUARDRAIL_EXAMPLE_TOKENS": "6", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, str(REPO / "tests" / "support" / "run_examples.py"), str(spec)], cwd=root,
                   env=env, check=True, timeout=3000)
    codes = json.loads(Path(f"{spec}.out").read_text(encoding="utf-8"))
    out = {}
    for item in specs:
        name = Path(item["script"]).name
        out[name] = (Path(item["cwd"]), int(codes[item["script"]]["returncode"]),
                     Path(item["stdout"]).read_text(encoding="utf-8"), Path(item["stderr"]).read_text(encoding="utf-8"))
    return out


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script: str, runs: dict[str, tuple[Path, int, str, str]]) -> None:
    _, expected = RUNS[script]
    tmp_path, returncode, stdout, stderr = runs[script]
    assert returncode == 0, stderr[-3000:]
    missing = [text for text in expected if text not in stdout]
    assert missing == [], stdout[-3000:]
    if script == "distributed_calibration.py":
        assert (tmp_path / "guard-dp" / "guard.json").is_file()
    if script == "topical_rail.py":
        assert (tmp_path / "topical" / "guard.json").is_file()
    if script == "reply_inversion.py":
        assert (tmp_path / "inversion.png").stat().st_size > 0
