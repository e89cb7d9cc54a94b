"""``latent-guardrail add-response``: a response scorer added to an existing guard, its input part kept."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from latent_guardrail.artifact import load_fitted
from latent_guardrail.cli import app
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import load_host
from tests.support.models import HARMFUL, HARMLESS, make_host
from tests.support.responses import response_pairs

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("add-response")
    host = make_host(seed=0)
    model_dir = root / "model"
    host.model.save_pretrained(model_dir)
    host.tokenizer.save_pretrained(model_dir)
    loaded = load_host(str(model_dir))
    LatentGuard.calibrate(loaded, HARMFUL, HARMLESS, mode="tuned", progress=False).save(root / "guard")
    sets = root / "sets"
    sets.mkdir()
    (sets / "pairs.jsonl").write_text("".join(json.dumps({**dataclasses.asdict(p), "topic": p.group}) + "\n"
                                              for p in response_pairs()), encoding="utf-8")
    return {"model": model_dir, "guard": root / "guard", "sets": sets, "root": root}


def test_add_response_keeps_the_input_part(saved: dict[str, Path]) -> None:
    out = saved["root"] / "with-response"
    result = runner.invoke(app, ["add-response", str(saved["guard"]), "--model", str(saved["model"]), "--sets",
                                 str(saved["sets"]), "--every", "3", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "response scorer added" in result.output
    before, after = load_fitted(saved["guard"]), load_fitted(out)
    assert before.response is None and after.response is not None and after.response.every == 3
    assert after.scorer.config() == before.scorer.config()
    for name, value in before.scorer.to_tensors().items():
        assert torch.equal(value, after.scorer.to_tensors()[name]), name
    assert after.report["response"]["answers"] == len(response_pairs())


def test_add_response_without_sets_exits_2(saved: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["add-response", str(saved["guard"]), "--model", str(saved["model"]), "--sets",
                                 str(tmp_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no response calibration sets" in " ".join(result.output.split())


def test_add_response_copies_a_fitted_part(saved: dict[str, Path], tmp_path: Path) -> None:
    donor = saved["root"] / "with-response"
    if not donor.is_dir():
        test_add_response_keeps_the_input_part(saved)
    result = runner.invoke(app, ["add-response", str(saved["guard"]), "--model", str(saved["model"]), "--from",
                                 str(donor), "-o", str(tmp_path / "copy")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    copied, original = load_fitted(tmp_path / "copy"), load_fitted(donor)
    assert copied.response is not None and original.response is not None
    assert copied.response.config() == original.response.config()
    assert torch.equal(copied.response.directions, original.response.directions)
    no_part = runner.invoke(app, ["add-response", str(saved["guard"]), "--model", str(saved["model"]), "--from",
                                  str(saved["guard"]), "-o", str(tmp_path / "x")])
    assert no_part.exit_code == 2 and "no response part" in " ".join(no_part.output.split())
