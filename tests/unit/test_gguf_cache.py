"""Any GGUF file is de-quantized once and cached by its content (``hosts.gguf_model_dir``); the conversion itself
(transformers' GGUF reader) runs for real in provisioning the default model, so here it is a tiny host saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_guardrail import hosts
from latent_guardrail.errors import HostError
from tests.support.models import make_host


@pytest.fixture
def converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    monkeypatch.setenv("LATENT_GUARDRAIL_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def convert(gguf: Path, target: Path) -> None:        # what the real converter leaves: a safetensors folder
        calls.append(gguf)
        tiny = make_host(seed=len(calls))
        target.mkdir(parents=True)
        tiny.model.save_pretrained(target)
        tiny.tokenizer.save_pretrained(target)

    monkeypatch.setattr(hosts, "_convert_gguf", convert)
    return calls


def test_a_gguf_file_is_converted_once_and_found_again_by_content(tmp_path: Path, converter: list[Path]) -> None:
    first = tmp_path / "a" / "model.Q8_0.gguf"
    first.parent.mkdir()
    first.write_bytes(b"GGUF one file")
    host = hosts.load_host(str(first))
    assert converter == [first] and host.num_blocks == 3
    copy = tmp_path / "b" / "renamed.gguf"                 # same bytes elsewhere: no second conversion
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    again = hosts.load_host(str(tmp_path / "b"), gguf_file="renamed.gguf")
    assert converter == [first]
    assert hosts.gguf_model_dir(copy) == hosts.gguf_model_dir(first)
    assert again.tokenizer("hello").input_ids == host.tokenizer("hello").input_ids
    changed = tmp_path / "c.gguf"                          # other bytes: converted again, into its own folder
    changed.write_bytes(b"GGUF another file")
    hosts.load_host(str(changed))
    assert converter == [first, changed]
    assert hosts.gguf_model_dir(changed) != hosts.gguf_model_dir(first)


def test_a_missing_gguf_file_is_named(tmp_path: Path, converter: list[Path]) -> None:
    with pytest.raises(HostError, match="GGUF file not found"):
        hosts.load_host(str(tmp_path / "nowhere.gguf"))
    assert converter == []
