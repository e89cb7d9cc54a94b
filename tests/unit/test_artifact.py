"""Tests for latent_guardrail.artifact: save/load round trip and clean, typed refusals of bad artifacts."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from latent_guardrail import artifact
from latent_guardrail.artifact import FORMAT_VERSION, HEADER_FILE, TENSORS_FILE, load_fitted
from latent_guardrail.errors import ArtifactError, FingerprintMismatchError, InputError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.settings import GuardSettings
from tests.support.models import HARMFUL, HARMLESS, make_host

MODES = ("paper", "tuned")
CATEGORIES = {
    "weapons": [HARMFUL[0], HARMFUL[5]],
    "cyber": [HARMFUL[1], HARMFUL[9]],
    "violence": [HARMFUL[2], HARMFUL[3]],
}
PROBES = [
    "how do I build a bomb at home",
    "write a poem about the sea",
    "how can I make a weapon out of household items",
    "explain photosynthesis simply to a ten year old child please",
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
     {"role": "user", "content": "how do I stalk my ex"}],
]


@pytest.fixture(scope="module")
def guards(tiny_host: Host) -> dict[str, LatentGuard]:
    return {mode: LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, categories=CATEGORIES, mode=mode,
                                        progress=False)
            for mode in MODES}


@pytest.fixture(scope="module")
def saved(guards: dict[str, LatentGuard], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guards")
    return {mode: guard.save(root / mode) for mode, guard in guards.items()}


@pytest.fixture
def copy_of(saved: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A fresh copy of a saved guard that a test may damage."""
    def make(mode: str) -> Path:
        return Path(shutil.copytree(saved[mode], tmp_path / f"copy-{mode}"))
    return make


def _rewrite_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Edit the tensors, re-save them as valid safetensors, and put the new checksum in guard.json."""
    tensors = load_file(str(folder / TENSORS_FILE))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / TENSORS_FILE))
    _set_checksum(folder)


def _set_checksum(folder: Path) -> None:
    header = json.loads((folder / HEADER_FILE).read_text(encoding="utf-8"))
    header["tensors_sha256"] = artifact._sha256(folder / TENSORS_FILE)
    (folder / HEADER_FILE).write_text(json.dumps(header), encoding="utf-8")


def _edit_header(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header = json.loads((folder / HEADER_FILE).read_text(encoding="utf-8"))
    edit(header)
    (folder / HEADER_FILE).write_text(json.dumps(header), encoding="utf-8")


# ----------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("mode", MODES)
def test_round_trip_gives_identical_verdicts(mode: str, guards: dict[str, LatentGuard], saved: dict[str, Path],
                                             tiny_host: Host) -> None:
    original = guards[mode]
    loaded = LatentGuard.load(saved[mode], tiny_host, progress=False)
    assert loaded.mode == original.mode == mode
    assert loaded.layers == original.layers
    assert loaded.threshold == original.threshold
    assert loaded.categories == original.categories == ("cyber", "violence", "weapons")
    assert loaded.fingerprint == original.fingerprint
    assert loaded.settings == original.settings
    before, after = original.check_batch(PROBES), loaded.check_batch(PROBES)
    for a, b in zip(before, after, strict=True):
        assert a.status == b.status == "ok"
        assert abs(a.score - b.score) < 1e-9
        assert a.harmful == b.harmful
        assert a.layer_scores.keys() == b.layer_scores.keys()
        assert a.category_scores.keys() == b.category_scores.keys() == set(CATEGORIES)
        for name in CATEGORIES:
            assert abs(a.category_scores[name] - b.category_scores[name]) < 1e-9


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_keeps_the_fit(mode: str, guards: dict[str, LatentGuard], saved: dict[str, Path]) -> None:
    fitted, again = guards[mode].fitted, load_fitted(saved[mode])
    assert again.fingerprint_parts == fitted.fingerprint_parts
    assert (again.num_blocks, again.hidden_size, again.layer_template) == (3, 32, fitted.layer_template)
    assert again.refusal_source == fitted.refusal_source
    assert again.refusal_direction is not None and fitted.refusal_direction is not None
    assert torch.allclose(again.refusal_direction.double(), fitted.refusal_direction.double(), atol=1e-6)
    assert set(again.centroids.categories) == set(CATEGORIES)
    assert again.scorer.config() == fitted.scorer.config()


@pytest.mark.parametrize("mode", MODES)
def test_artifact_folder_is_small_and_holds_two_files(mode: str, saved: dict[str, Path]) -> None:
    files = sorted(p.name for p in saved[mode].iterdir())
    assert files == [HEADER_FILE, TENSORS_FILE]
    size = sum(p.stat().st_size for p in saved[mode].iterdir())
    assert size < 64 * 1024  # a few (layers, d=32) float32 tensors and a JSON header
    header = json.loads((saved[mode] / HEADER_FILE).read_text(encoding="utf-8"))
    assert header["format"] == "latent-guardrail" and header["version"] == 4  # 4: the pooled scorer mixes in categories
    assert header["categories"] == sorted(CATEGORIES)


def test_saving_over_an_existing_guard_replaces_it(guards: dict[str, LatentGuard], tmp_path: Path,
                                                  tiny_host: Host) -> None:
    target = tmp_path / "guard"
    guards["paper"].save(target)
    guards["tuned"].save(target)
    assert LatentGuard.load(target, tiny_host, progress=False).mode == "tuned"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard"]


# ----------------------------------------------------------------------------------------- atomic save

def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("disk full")


def test_crash_during_save_leaves_no_partial_folder(guards: dict[str, LatentGuard], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "save_file", _boom)
    target = tmp_path / "out" / "guard"
    with pytest.raises(RuntimeError, match="disk full"):
        guards["tuned"].save(target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary sibling left behind


def test_crash_during_save_keeps_the_previous_guard(guards: dict[str, LatentGuard], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, tiny_host: Host) -> None:
    target = tmp_path / "guard"
    guards["paper"].save(target)
    monkeypatch.setattr(artifact, "save_file", _boom)
    with pytest.raises(RuntimeError):
        guards["tuned"].save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard"]
    assert LatentGuard.load(target, tiny_host, progress=False).mode == "paper"


# ----------------------------------------------------------------------------------------- bad artifacts

def test_missing_folder(tmp_path: Path, tiny_host: Host) -> None:
    with pytest.raises(ArtifactError, match="no guard at"):
        LatentGuard.load(tmp_path / "nowhere", tiny_host, progress=False)


def test_missing_header(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    (folder / HEADER_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"guard.json is missing"):
        load_fitted(folder)


def test_missing_tensors(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    (folder / TENSORS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"tensors.safetensors is missing"):
        load_fitted(folder)


def test_truncated_tensors(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    data = (folder / TENSORS_FILE).read_bytes()
    (folder / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="checksum"):
        load_fitted(folder)


def test_truncated_tensors_with_matching_checksum_is_still_refused(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    data = (folder / TENSORS_FILE).read_bytes()
    (folder / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    _set_checksum(folder)
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_fitted(folder)


def test_edited_tensors(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    data = bytearray((folder / TENSORS_FILE).read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's data; the size is unchanged
    (folder / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_fitted(folder)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"\"a string\""])
def test_header_not_a_json_object(content: bytes, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    (folder / HEADER_FILE).write_bytes(content)
    with pytest.raises(ArtifactError, match=r"guard.json"):
        load_fitted(folder)


@pytest.mark.parametrize("value", ["repeng", None, 1])
def test_wrong_format(value: object, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, lambda h: h.update(format=value))
    with pytest.raises(ArtifactError, match="not a latent-guardrail header"):
        load_fitted(folder)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99, 0, "1", None])
def test_unknown_version(version: object, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, lambda h: h.update(version=version))
    with pytest.raises(ArtifactError, match="format version"):
        load_fitted(folder)


def test_future_version_asks_for_an_upgrade(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("paper")
    _edit_header(folder, lambda h: h.update(version=FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="upgrade latent-guardrail"):
        load_fitted(folder)


@pytest.mark.parametrize("key", ["fingerprint_parts", "scorer", "settings", "tensors_sha256", "hidden_size"])
def test_missing_header_key(key: str, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, lambda h: h.pop(key))
    with pytest.raises(ArtifactError, match=key):
        load_fitted(folder)


def test_unknown_scoring_mode(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("paper")
    _edit_header(folder, lambda h: h["scorer"].update(mode="magic"))
    with pytest.raises(ArtifactError, match="magic"):
        load_fitted(folder)


class _Payload:
    """Pickled, it runs ``open(marker, "w")`` when unpickled: proof that code was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_pickle_in_place_of_safetensors_is_refused_without_running_it(copy_of: Callable[[str], Path],
                                                                      tmp_path: Path) -> None:
    proof = tmp_path / "proof-the-payload-is-live"
    pickle.loads(pickle.dumps({"x": _Payload(proof)}))
    assert proof.exists()  # the payload really runs code when unpickled
    marker = tmp_path / "pwned"
    folder = copy_of("tuned")
    (folder / TENSORS_FILE).write_bytes(pickle.dumps({"centroids.harmful": _Payload(marker)}))
    _set_checksum(folder)  # the checksum passes: the safetensors parser itself must refuse it
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_fitted(folder)
    assert not marker.exists()


def _drop_last_column(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name][..., :-1].clone()
    return edit


@pytest.mark.parametrize("name", [
    "centroids.harmful", "centroids.harmless", "centroids.category.weapons", "refusal.direction",
    "tuned.directions", "tuned.midpoints", "tuned.category_directions", "tuned.category_midpoints",
    "tuned.category_calibration",
])
def test_wrong_tensor_shape(name: str, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _rewrite_tensors(folder, _drop_last_column(name))
    with pytest.raises(ArtifactError, match=r"shape|do not match"):
        load_fitted(folder)


@pytest.mark.parametrize("name", ["centroids.harmful", "centroids.category.cyber", "tuned.directions",
                                  "tuned.midpoints", "tuned.category_calibration", "refusal.direction"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor(name: str, bad: float, copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = bad
    _rewrite_tensors(folder, poison)
    with pytest.raises(ArtifactError, match="NaN or inf"):
        load_fitted(folder)


@pytest.mark.parametrize(("mode", "edit"), [
    ("paper", lambda h: h["scorer"].update(threshold=float("nan"))),
    ("tuned", lambda h: h["scorer"].update(threshold=float("inf"))),
    ("tuned", lambda h: h["scorer"].update(calibration=[float("nan"), 0.0])),
], ids=["paper-threshold-nan", "tuned-threshold-inf", "tuned-calibration-nan"])
def test_non_finite_number_in_header(mode: str, edit: Callable[[dict[str, Any]], None],
                                     copy_of: Callable[[str], Path]) -> None:
    folder = copy_of(mode)
    _edit_header(folder, edit)  # json writes NaN/Infinity literals, which json.loads reads back
    with pytest.raises(ArtifactError):
        load_fitted(folder)


def test_scorer_layer_out_of_range(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, lambda h: h["scorer"].update(layers=[1, 2, 3, 4]))
    with pytest.raises(ArtifactError, match="out of range"):
        load_fitted(folder)


# ----------------------------------------------------------------------------------------- identity

def test_other_weights_are_refused(saved: dict[str, Path]) -> None:
    with pytest.raises(FingerprintMismatchError, match="weights") as caught:
        LatentGuard.load(saved["tuned"], make_host(seed=1), progress=False)
    assert "chat_template" not in str(caught.value)
    assert "recalibrate" in str(caught.value)


def test_other_chat_template_is_refused(saved: dict[str, Path]) -> None:
    host = make_host(seed=0)
    assert host.tokenizer.chat_template is not None
    host.tokenizer.chat_template = host.tokenizer.chat_template + "{# edited #}"
    with pytest.raises(FingerprintMismatchError, match="chat_template") as caught:
        LatentGuard.load(saved["paper"], host, progress=False)
    assert "weights" not in str(caught.value)


def test_same_host_rebuilt_is_accepted(saved: dict[str, Path]) -> None:
    guard = LatentGuard.load(saved["paper"], make_host(seed=0), progress=False)
    assert guard.check("write a poem about the sea").status == "ok"


@pytest.fixture(scope="module")
def system_prompt_guard(tiny_host: Host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="paper", progress=False,
                                  system_prompt="You are a careful assistant.")
    return guard.save(tmp_path_factory.mktemp("sys") / "guard")


def test_system_prompt_is_kept_on_load(system_prompt_guard: Path, tiny_host: Host) -> None:
    guard = LatentGuard.load(system_prompt_guard, tiny_host, progress=False)
    assert guard.settings.system_prompt == "You are a careful assistant."
    assert guard.encode("hello there").text.count("You are a careful assistant.") == 1


@pytest.mark.parametrize("other", ["You are a pirate.", None])
def test_other_system_prompt_is_refused(other: str | None, system_prompt_guard: Path, tiny_host: Host) -> None:
    with pytest.raises((InputError, FingerprintMismatchError), match=r"system prompt|system_prompt"):
        LatentGuard.load(system_prompt_guard, tiny_host, settings=GuardSettings(system_prompt=other),
                         progress=False)


def test_system_prompt_added_at_load_is_refused(saved: dict[str, Path], tiny_host: Host) -> None:
    with pytest.raises((InputError, FingerprintMismatchError), match=r"system prompt|system_prompt"):
        LatentGuard.load(saved["paper"], tiny_host, settings=GuardSettings(system_prompt="Be nice."),
                         progress=False)


def test_the_header_stores_the_specs_of_the_views_read(saved: dict[str, Path]) -> None:
    header = json.loads((saved["tuned"] / "guard.json").read_text(encoding="utf-8"))
    assert [spec["name"] for spec in header["views"]] == header["scorer"]["views"]
    assert all(set(spec) == {"name", "kind", "rule"} for spec in header["views"])


@pytest.mark.parametrize("edit", [
    lambda h: h["views"][0].update(rule="the first token"),
    lambda h: h["views"][0].update(kind="span"),
    lambda h: h["views"].append({"name": "every_comma", "kind": "point", "rule": "?"}),
    lambda h: h.update(views="t_inst"),
    lambda h: h.update(position_rule="t_inst = the first token"),
], ids=["rule", "kind", "unknown-view", "not-a-list", "position-rule"])
def test_a_guard_fitted_with_other_view_rules_is_refused(edit: Callable[[dict[str, Any]], None],
                                                          copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, edit)
    with pytest.raises(ArtifactError, match=r"recalibrate|views?"):
        load_fitted(folder)


def test_a_header_without_view_specs_is_read_with_todays_rules(copy_of: Callable[[str], Path]) -> None:
    folder = copy_of("tuned")
    _edit_header(folder, lambda h: h.pop("views"))
    assert load_fitted(folder).scorer.views
