"""Weight drift: the fingerprint tells a fine-tune from another model, the guard refuses it unless allowed (then
every verdict says so), ``measure_drift`` / ``latent-guardrail drift`` measure how far scores move, and the CLI and
NeMo settings carry the flag."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from latent_guardrail.artifact import check_fingerprint
from latent_guardrail.cli import app
from latent_guardrail.datasets import PromptRecord
from latent_guardrail.drift import DriftResult, measure_drift
from latent_guardrail.errors import FingerprintMismatchError, WeightDriftError
from latent_guardrail.fingerprint import IDENTITY_PARTS, WEIGHTS_PART
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host, load_host
from latent_guardrail.settings import GuardSettings
from tests.support.models import HARMFUL, HARMLESS, make_host

runner = CliRunner()
RECORDS = [PromptRecord(text=t, label="harmful") for t in HARMFUL] + [
    PromptRecord(text=t, label="harmless") for t in HARMLESS]


def _tuned(host: Host, scale: float, seed: int = 1) -> Host:
    """A copy of ``host`` whose attention projections moved by ``scale`` times their own size (a fine-tune)."""
    model = copy.deepcopy(host.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(scale * parameter.abs().mean() * noise)
    return Host(model=model, tokenizer=host.tokenizer, name=f"{host.name}-tuned-{scale}")


@pytest.fixture(scope="module")
def base() -> Host:
    return make_host("chatml", seed=0)


@pytest.fixture(scope="module")
def guard(base: Host) -> LatentGuard:
    return LatentGuard.calibrate(base, HARMFUL, HARMLESS, mode="paper", progress=False)


# ------------------------------------------------------------------------------------------- fingerprint
def test_a_fine_tune_differs_in_weights_only(base: Host) -> None:
    parts, tuned = base.fingerprint_parts(None), _tuned(base, 0.05).fingerprint_parts(None)
    assert [key for key in parts if parts[key] != tuned[key]] == [WEIGHTS_PART]


def test_another_model_differs_in_its_identity_parts(base: Host) -> None:
    parts = base.fingerprint_parts(None)
    deeper = make_host("chatml", layers=4).fingerprint_parts(None)
    other_tokenizer = make_host("llama2").fingerprint_parts(None)
    assert parts["model"] != deeper["model"]
    assert parts["tokenizer"] != other_tokenizer["tokenizer"] or parts["chat_template"] != other_tokenizer[
        "chat_template"]
    assert set(IDENTITY_PARTS) & {key for key in parts if parts[key] != deeper[key]}


def test_a_bfloat16_copy_is_not_drift(base: Host) -> None:
    assert make_host("chatml", seed=0, dtype=torch.bfloat16).fingerprint_parts(None) == base.fingerprint_parts(None)


def test_check_fingerprint_separates_drift_from_another_host(guard: LatentGuard, base: Host) -> None:
    drifted = _tuned(base, 0.05).fingerprint_parts(None)
    with pytest.raises(WeightDriftError, match="allow_weight_drift=True"):
        check_fingerprint(guard.fitted, drifted)
    assert check_fingerprint(guard.fitted, drifted, allow_weight_drift=True) is True
    assert check_fingerprint(guard.fitted, base.fingerprint_parts(None), allow_weight_drift=True) is False
    other = make_host("chatml", layers=4).fingerprint_parts(None)
    with pytest.raises(FingerprintMismatchError, match="another host") as caught:
        check_fingerprint(guard.fitted, other, allow_weight_drift=True)
    assert not isinstance(caught.value, WeightDriftError)


# ------------------------------------------------------------------------------------------- loading
def test_load_refuses_drift_without_the_flag_and_marks_verdicts_with_it(guard: LatentGuard, base: Host,
                                                                        tmp_path: Path) -> None:
    folder = guard.save(tmp_path / "guard")
    tuned = _tuned(base, 0.05)
    with pytest.raises(WeightDriftError, match="--allow-weight-drift"):
        LatentGuard.load(folder, tuned)
    for loaded in (LatentGuard.load(folder, tuned, allow_weight_drift=True),
                   LatentGuard.load(folder, tuned, settings=GuardSettings(allow_weight_drift=True))):
        assert loaded.weight_drift is True
        verdicts = loaded.check_batch(HARMFUL[:2] + HARMLESS[:2])
        assert [v.weight_drift for v in verdicts] == [True] * 4
        assert all(v.status == "ok" for v in verdicts)
        assert loaded.with_settings(threshold=0.5).check(HARMFUL[0]).weight_drift is True
    plain = LatentGuard.load(folder, base)
    assert plain.weight_drift is False
    assert plain.check(HARMFUL[0]).weight_drift is False


def test_failure_verdicts_of_a_drifted_host_carry_the_flag(guard: LatentGuard, base: Host) -> None:
    drifted = LatentGuard(_tuned(base, 0.05), guard.fitted, GuardSettings(allow_weight_drift=True))
    assert drifted.failure_verdict(RuntimeError("boom")).weight_drift is True
    assert guard.failure_verdict(RuntimeError("boom")).weight_drift is False
    response = drifted.response_failure(RuntimeError("boom"))
    assert (response.weight_drift, response.target, response.status) == (True, "response", "error")
    cut = drifted.with_settings(max_tokens=64, on_overflow="block").check(HARMLESS[0] + " and more words" * 40)
    assert (cut.weight_drift, cut.error, cut.truncated, cut.harmful) == (True, "input_too_long", True, True)
    from latent_guardrail.integrations.nemo.rail import _empty_outcome  # the NeMo rail's empty message

    assert _empty_outcome(drifted).metadata["weight_drift"] is True
    assert _empty_outcome(guard).metadata["weight_drift"] is False


def test_another_model_stays_refused_with_the_flag(guard: LatentGuard, tmp_path: Path) -> None:
    folder = guard.save(tmp_path / "guard")
    with pytest.raises(FingerprintMismatchError, match="another host: model"):
        LatentGuard.load(folder, make_host("chatml", layers=4), allow_weight_drift=True)


# ------------------------------------------------------------------------------------------- measure_drift
def test_no_drift_on_the_same_weights(guard: LatentGuard, base: Host) -> None:
    same = Host(model=copy.deepcopy(base.model), tokenizer=base.tokenizer, name="copy")
    result = measure_drift(guard, same, RECORDS)
    assert isinstance(result, DriftResult)
    assert result.weight_drift is False
    assert result.max_abs_delta < 1e-6
    assert result.flips == 0
    assert result.recalibrate is False
    assert (result.harmful, result.harmless, result.prompts) == (len(HARMFUL), len(HARMLESS), len(RECORDS))


def test_drift_grows_with_the_change_and_advises_recalibration(guard: LatentGuard, base: Host) -> None:
    small = measure_drift(guard, _tuned(base, 0.02), RECORDS)
    large = measure_drift(guard, _tuned(base, 2.0), RECORDS)
    assert small.weight_drift and large.weight_drift
    assert 0 < small.mean_abs_delta < large.mean_abs_delta
    assert small.max_abs_delta >= small.mean_abs_delta
    assert large.shift is not None and large.shift > small.shift  # type: ignore[operator]
    assert large.recalibrate is True
    assert "recalibrate" in large.advice
    strict = measure_drift(guard, _tuned(base, 0.02), RECORDS, shift_limit=0.0, flip_limit=0.0)
    assert strict.recalibrate is True


def test_measure_drift_refuses_another_model(guard: LatentGuard) -> None:
    with pytest.raises(FingerprintMismatchError):
        measure_drift(guard, make_host("chatml", layers=4), RECORDS)


# ------------------------------------------------------------------------------------------- CLI and NeMo
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, base: Host) -> dict[str, Path]:
    """Base and fine-tuned hosts saved like checkpoints, a guard fitted on the saved base (save_pretrained fills in
    the config's architectures, so the guard is fitted on the host as loaded), a labelled prompt file."""
    root = tmp_path_factory.mktemp("drift")
    out: dict[str, Path] = {}
    for name, host in (("base", base), ("tuned", _tuned(base, 0.05))):
        model = copy.deepcopy(host.model)  # save_pretrained edits the config
        model.save_pretrained(root / name)
        host.tokenizer.save_pretrained(root / name)
        out[name] = root / name
    fitted = LatentGuard.calibrate(load_host(out["base"]), HARMFUL, HARMLESS, mode="paper", progress=False)
    out["guard"] = fitted.save(root / "guard")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": r.text, "label": r.label}) + "\n" for r in RECORDS),
                       encoding="utf-8")
    out["prompts"] = prompts
    return out


def test_cli_check_needs_the_flag_on_a_fine_tune(saved: dict[str, Path]) -> None:
    args = ["check", HARMFUL[0], "--guard", str(saved["guard"]), "--model", str(saved["tuned"]), "--json"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert "--allow-weight-drift" in " ".join(refused.output.split())
    accepted = runner.invoke(app, [*args, "--allow-weight-drift"], catch_exceptions=False)
    assert accepted.exit_code == 0, accepted.output
    line = json.loads(accepted.output.strip().splitlines()[-1])
    assert line["weight_drift"] is True
    assert line["status"] == "ok"


def test_cli_drift_reports_a_typed_result(saved: dict[str, Path]) -> None:
    result = runner.invoke(app, ["drift", "--guard", str(saved["guard"]), "--base-model", str(saved["base"]),
                                 "--model", str(saved["tuned"]), "--prompts", str(saved["prompts"]), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    drift = DriftResult.model_validate_json(result.output.strip().splitlines()[-1])
    assert drift.weight_drift is True
    assert drift.prompts == len(RECORDS)
    assert drift.mean_abs_delta > 0
    table = runner.invoke(app, ["drift", "--guard", str(saved["guard"]), "--base-model", str(saved["base"]),
                                "--model", str(saved["base"]), "--prompts", str(saved["prompts"])],
                          catch_exceptions=False)
    assert table.exit_code == 0
    assert "OK" in table.output and "verdict flips" in table.output


def test_nemo_setting_allows_drift(saved: dict[str, Path]) -> None:
    from latent_guardrail.integrations.nemo.loading import LatentGuardRailSettings, NemoConfigError, shared_guard

    settings = LatentGuardRailSettings.from_custom_data({"latent_guard": {"allow_weight_drift": True}})
    assert settings.allow_weight_drift is True
    assert LatentGuardRailSettings().allow_weight_drift is False
    guard_dir, host_dir = str(saved["guard"]), str(saved["tuned"])
    with pytest.raises(NemoConfigError, match="allow_weight_drift"):
        shared_guard(guard_dir, host_dir)
    loaded = shared_guard(guard_dir, host_dir, allow_weight_drift=True)
    assert loaded.weight_drift is True
    assert loaded.check(HARMFUL[0]).weight_drift is True
    with pytest.raises(NemoConfigError, match="allow_weight_drift"):  # a caller without the flag: never served
        shared_guard(guard_dir, host_dir)


def test_an_artifact_with_the_old_weights_part_still_loads_on_its_host(guard: LatentGuard, base: Host,
                                                                       tmp_path: Path) -> None:
    """Guards saved before ``weights`` covered every tensor stored a hash of the input embeddings only."""
    from latent_guardrail.fingerprint import legacy_weights_digest

    folder = guard.save(tmp_path / "old")
    header = json.loads((folder / "guard.json").read_text(encoding="utf-8"))
    header["fingerprint_parts"][WEIGHTS_PART] = legacy_weights_digest(base.model)
    (folder / "guard.json").write_text(json.dumps(header), encoding="utf-8")
    assert LatentGuard.load(folder, base).weight_drift is False
    with pytest.raises(WeightDriftError):  # another fine-tune's embeddings differ: still drift
        LatentGuard.load(folder, _tuned_embeddings(base))


def _tuned_embeddings(host: Host) -> Host:
    model = copy.deepcopy(host.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)
    return Host(model=model, tokenizer=host.tokenizer, name=f"{host.name}-embeddings")
