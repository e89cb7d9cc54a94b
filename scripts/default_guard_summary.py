"""A compact, tolerance-comparable summary of a guard artifact (scorer config + per-tensor statistics).

    python scripts/default_guard_summary.py DIR [--write tests/fixtures/default_subset_guard.json]

Used by ``tests/integration/test_default_rebuild.py``: a rebuild of the default recipe on a subset of the
bundled sets (``build_default_guard(..., every=40)``) must match the stored summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file


def summary(folder: Path) -> dict[str, Any]:
    header = json.loads((folder / "guard.json").read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "tensors.safetensors"))
    stats = {name: {"shape": list(t.shape), "sum": float(t.double().sum()), "abs": float(t.double().abs().sum()),
                    "head": [float(x) for x in t.flatten()[:8].double()]} for name, t in sorted(tensors.items())}
    return {"scorer": header["scorer"], "views": header.get("views"), "tensors": stats}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    result = summary(args.folder)
    text = json.dumps(result, indent=1) + "\n"
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    print(text[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
