"""The import contracts of ``pyproject.toml`` ([tool.importlinter]): floors, no circles, framework-free core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_hold() -> None:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_nemo_modules_import_one_way() -> None:
    """The rail folder's files: actions and loading import no other rail module; config imports the rail."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("latent_guardrail")
    nemo = "latent_guardrail.integrations.nemo"

    def imports(module: str) -> set[str]:
        return {name for name in graph.find_modules_directly_imported_by(f"{nemo}.{module}")
                if name.startswith(f"{nemo}.")}

    assert imports("actions") == set()
    assert imports("loading") == set()
    assert imports("rail") == {f"{nemo}.actions", f"{nemo}.loading", f"{nemo}.provider"}
    assert imports("config") == {f"{nemo}.loading", f"{nemo}.rail"}
    assert not graph.find_shortest_chain("latent_guardrail.distributed", "latent_guardrail.guard")
