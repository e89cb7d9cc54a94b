"""The shipped default guard is what the recipe makes: a rebuild on a subset of the bundled sets matches the
stored summary (``tests/fixtures/default_subset_guard.json``, made by ``scripts/default_guard_summary.py``),
and the shipped artifact loads onto the default host with the recipe's scorer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from latent_guardrail import LatentGuard
from latent_guardrail.guard import build_default_guard, shipped_default_guard
from latent_guardrail.hosts import Host

ROOT = Path(__file__).resolve().parents[2]


def _summary(folder: Path) -> dict:  # type: ignore[type-arg]
    spec = importlib.util.spec_from_file_location("summary", ROOT / "scripts" / "default_guard_summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.summary(folder)  # type: ignore[no-any-return]


def test_a_rebuild_on_a_subset_matches_the_stored_one(default_host: Host, tmp_path: Path) -> None:
    stored = json.loads((ROOT / "tests" / "fixtures" / "default_subset_guard.json").read_text(encoding="utf-8"))
    built = _summary(build_default_guard(default_host, tmp_path / "g", every=40, progress=False))
    for key in ("mode", "layers", "views", "pooling", "categories"):
        assert built["scorer"][key] == stored["scorer"][key]
    assert built["scorer"]["threshold"] == pytest.approx(stored["scorer"]["threshold"], rel=1e-4, abs=1e-4)
    assert set(built["tensors"]) == set(stored["tensors"])
    for name, stats in stored["tensors"].items():
        mine = built["tensors"][name]
        assert mine["shape"] == stats["shape"], name
        assert mine["sum"] == pytest.approx(stats["sum"], rel=1e-3, abs=1e-3), name
        assert mine["abs"] == pytest.approx(stats["abs"], rel=1e-3, abs=1e-3), name
        assert mine["head"] == pytest.approx(stats["head"], rel=1e-3, abs=1e-4), name


def test_the_shipped_default_guard_is_the_pooled_recipe_for_the_default_host(default_guard: LatentGuard) -> None:
    shipped = shipped_default_guard()
    assert shipped is not None
    assert default_guard.mode == "pooled" and default_guard.views == ("clause_ends",)
    assert json.loads((shipped / "guard.json").read_text(encoding="utf-8"))["fingerprint"] == default_guard.fingerprint
