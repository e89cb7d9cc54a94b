"""Print a benchmark's named results as an aligned table and optionally write them as JSON (shared by the scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_results(title: str, results: dict[str, Any], json_path: Path | None) -> None:
    """Print ``title`` and one ``name  value`` line per result; write ``results`` to ``json_path`` when given."""
    width = max(len(key) for key in results)
    print(title)
    for key, value in results.items():
        print(f"  {key:<{width}}  {value}")
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2))
