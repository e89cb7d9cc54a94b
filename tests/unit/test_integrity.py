"""Artifact integrity: every damaged, forged or foreign guard artifact is a typed error, and loading runs no code.

``tests/unit/test_artifact.py`` covers the round trip and the first corruptions (truncation, flipped bytes,
shapes, NaN, versions, a pickle as the tensors file). This file adds a corpus of forged artifacts — pickles and
``torch.save`` archives named like artifact files, malformed safetensors headers, wrongly typed header fields,
tampered fingerprints, foreign hosts — and proves that no unpickler or ``torch.load`` is ever reached: each
payload would create a marker file if it ran, and the unpicklers themselves are replaced by tripwires.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from latent_guardrail import artifact
from latent_guardrail.artifact import FORMAT_VERSION, HEADER_FILE, TENSORS_FILE
from latent_guardrail.errors import ArtifactError, FingerprintMismatchError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from tests.support.models import HARMFUL, HARMLESS, make_host

CATEGORIES = {"weapons": [HARMFUL[0], HARMFUL[5]], "cyber": [HARMFUL[1], HARMFUL[9]]}


class Payload:
    """Unpickled, it creates ``marker``: proof that loading executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def saved(tiny_host: Host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    guard = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, categories=CATEGORIES, mode="tuned", progress=False)
    return guard.save(tmp_path_factory.mktemp("integrity") / "guard")


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Replace every way of unpickling (pickle, torch.load) by a recorder: the list names what was called."""
    calls: list[str] = []

    def trip(name: str) -> Callable[..., Any]:
        def called(*_args: Any, **_kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called while loading an artifact")
        return called

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, trip(f"{module.__name__}.{name}"))
    yield calls


def _header(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / HEADER_FILE).read_text(encoding="utf-8")))


def _write_header(folder: Path, header: dict[str, Any]) -> None:
    (folder / HEADER_FILE).write_text(json.dumps(header), encoding="utf-8")


def _reseal(folder: Path) -> None:
    """Put the tensors file's real checksum in the header (a forger who knows the format does this)."""
    header = _header(folder)
    header["tensors_sha256"] = artifact._sha256(folder / TENSORS_FILE)
    _write_header(folder, header)


def _edit_header(**changes: Any) -> Callable[[Path, Path], None]:
    def edit(folder: Path, _marker: Path) -> None:
        header = _header(folder)
        for key, value in changes.items():
            if value is _DROP:
                header.pop(key)
            else:
                header[key] = value
        _write_header(folder, header)
    return edit


_DROP = object()


def _retensor(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, Path], None]:
    def apply(folder: Path, _marker: Path) -> None:
        tensors = load_file(str(folder / TENSORS_FILE))
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / TENSORS_FILE))
        _reseal(folder)
    return apply


def _raw_tensors(data: Callable[[Path], bytes], reseal: bool = True) -> Callable[[Path, Path], None]:
    def apply(folder: Path, marker: Path) -> None:
        (folder / TENSORS_FILE).write_bytes(data(marker))
        if reseal:
            _reseal(folder)
    return apply


def _torch_save_bytes(marker: Path) -> bytes:
    """A ``torch.save`` zip archive whose pickle holds the payload (written with the real pickler)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"centroids.harmful": Payload(marker)}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _safetensors_with_header(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _pickle_header(folder: Path, marker: Path) -> None:
    (folder / HEADER_FILE).write_bytes(pickle.dumps({"format": "latent-guardrail", "x": Payload(marker)}))


def _only_pickles(folder: Path, marker: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    (folder / "guard.pkl").write_bytes(pickle.dumps(Payload(marker)))


def _tensors_is_a_folder(folder: Path, _marker: Path) -> None:
    (folder / TENSORS_FILE).unlink()
    (folder / TENSORS_FILE).mkdir()


def _cast(name: str, dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].to(dtype)
    return edit


def _drop_tensor(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors.pop(name)
    return edit


def _transpose(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name].transpose(-1, -2).clone()
    return edit


# name -> damage(folder, marker). Every entry must end in an ArtifactError (or its FingerprintMismatchError).
CORRUPTIONS: dict[str, Callable[[Path, Path], None]] = {
    # pickles and torch archives named like artifact files
    "pickle as guard.json": _pickle_header,
    "pickle as tensors (resealed)": _raw_tensors(lambda m: pickle.dumps({"centroids.harmful": Payload(m)})),
    "torch.save zip as tensors (resealed)": _raw_tensors(_torch_save_bytes),
    "torch.save zip as tensors (old checksum)": _raw_tensors(_torch_save_bytes, reseal=False),
    "folder of pickles, no guard.json": _only_pickles,
    "tensors path is a folder": _tensors_is_a_folder,
    # malformed safetensors (resealed, so the parser itself must refuse them)
    "empty tensors file": _raw_tensors(lambda _m: b""),
    "safetensors length prefix only": _raw_tensors(lambda _m: struct.pack("<Q", 2**60)),
    "safetensors header longer than the file": _raw_tensors(lambda _m: struct.pack("<Q", 4096) + b"{}"),
    "safetensors header not JSON": _raw_tensors(lambda _m: struct.pack("<Q", 8) + b"not json"),
    "safetensors offsets beyond the data": _raw_tensors(lambda _m: _safetensors_with_header(
        {"centroids.harmful": {"dtype": "F32", "shape": [4, 32], "data_offsets": [0, 512]}}, b"\0" * 16)),
    "safetensors unknown dtype": _raw_tensors(lambda _m: _safetensors_with_header(
        {"centroids.harmful": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)),
    # edited tensors (valid safetensors, resealed)
    "centroids cast to int64": _retensor(_cast("centroids.harmful", torch.int64)),
    "directions cast to float16": _retensor(_cast("tuned.directions", torch.float16)),
    "category calibration cast to bool": _retensor(_cast("tuned.category_calibration", torch.bool)),
    "centroids transposed": _retensor(_transpose("centroids.harmless")),
    "tuned directions missing": _retensor(_drop_tensor("tuned.directions")),
    "category centroid missing": _retensor(_drop_tensor("centroids.category.cyber")),
    # header fields of the wrong type or value
    "version true": _edit_header(version=True),
    "version 1.0": _edit_header(version=1.0),
    "future version": _edit_header(version=FORMAT_VERSION + 1),
    "num_blocks a string": _edit_header(num_blocks="three"),
    "num_blocks null": _edit_header(num_blocks=None),
    "num_blocks negative": _edit_header(num_blocks=-1),
    "hidden_size zero": _edit_header(hidden_size=0),
    "hidden_size other": _edit_header(hidden_size=64),
    "fingerprint_parts a string": _edit_header(fingerprint_parts="abc"),
    "fingerprint_parts a list": _edit_header(fingerprint_parts=[["model", "x"]]),
    "fingerprint_parts values not strings": _edit_header(fingerprint_parts={"model": 1}),
    "layer_template a number": _edit_header(layer_template=7),
    "layer_template elsewhere": _edit_header(layer_template="model.embed_tokens.{num}"),
    "num_blocks other": _edit_header(num_blocks=2),
    "categories a number": _edit_header(categories=5),
    "categories unknown name": _edit_header(categories=["cyber", "weapons", "ghosts"]),
    "report a list": _edit_header(report=[1, 2]),
    "scorer a list": _edit_header(scorer=[1]),
    "settings unknown field": _edit_header(settings={"colour": "red"}),
    "settings on_error invalid": _edit_header(settings={"on_error": "ignore"}),
    "tensors_sha256 a number": _edit_header(tensors_sha256=12),
    "tensors_sha256 dropped": _edit_header(tensors_sha256=_DROP),
    "header a JSON array": lambda folder, _m: (folder / HEADER_FILE).write_text("[]", encoding="utf-8"),
    "header empty": lambda folder, _m: (folder / HEADER_FILE).write_bytes(b""),
    "header truncated": lambda folder, _m: (folder / HEADER_FILE).write_bytes(
        (folder / HEADER_FILE).read_bytes()[:100]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_artifact_is_a_clean_typed_error(name: str, saved: Path, tmp_path: Path,
                                                 tripwires: list[str], tiny_host: Host) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "guard"))
    marker = tmp_path / "code-ran"
    CORRUPTIONS[name](folder, marker)
    with pytest.raises(ArtifactError) as caught:
        LatentGuard.load(folder, tiny_host, progress=False)
    assert str(caught.value)  # a message that says what is wrong
    assert not marker.exists()
    assert tripwires == []


def test_the_payload_is_live_and_the_tripwires_work(tmp_path: Path, tripwires: list[str]) -> None:
    """The two proofs above could fail: the payload does run code when unpickled, and a tripwire fires."""
    marker = tmp_path / "ran"
    data = pickle.dumps(Payload(marker))
    pickle._loads(data)  # the pure-Python unpickler, not replaced by the tripwires  # type: ignore[attr-defined]
    assert marker.exists()
    with pytest.raises(AssertionError):
        torch.load(io.BytesIO(b""))
    assert tripwires == ["torch.load"]


def test_a_pickle_file_given_as_the_guard_path(tmp_path: Path, tripwires: list[str], tiny_host: Host) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "guard.safetensors"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ArtifactError, match="no guard at"):
        LatentGuard.load(path, tiny_host, progress=False)
    assert not marker.exists() and tripwires == []


def test_loading_a_good_guard_touches_no_unpickler(saved: Path, tripwires: list[str], tiny_host: Host) -> None:
    guard = LatentGuard.load(saved, tiny_host, progress=False)
    assert guard.check("write a poem about the sea").status == "ok"
    assert tripwires == []


# ------------------------------------------------------------------------------------------------ identity

@pytest.mark.parametrize("part", ["model", "tokenizer", "chat_template", "system_prompt", "weights"])
def test_tampered_fingerprint_part_is_a_mismatch(part: str, saved: Path, tmp_path: Path, tiny_host: Host) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "guard"))
    header = _header(folder)
    header["fingerprint_parts"][part] = "0" * 16
    _write_header(folder, header)
    with pytest.raises(FingerprintMismatchError, match=part):
        LatentGuard.load(folder, tiny_host, progress=False)


@pytest.mark.parametrize("host_kwargs", [{"family": "qwen2"}, {"hidden": 64}, {"layers": 4}, {"seed": 3}],
                         ids=["other-tokenizer-and-template", "other-width", "other-depth", "other-weights"])
def test_guard_on_a_foreign_host_is_a_mismatch(host_kwargs: dict[str, Any], saved: Path) -> None:
    with pytest.raises(FingerprintMismatchError, match="recalibrate"):
        LatentGuard.load(saved, make_host(**host_kwargs), progress=False)
