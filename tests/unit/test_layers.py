from __future__ import annotations

import pytest
from torch import nn

from latent_guardrail.errors import LayerError
from latent_guardrail.layers import check_layers, decoder_blocks, guess_layer_template
from tests.support.models import make_host


def test_guess_llama_template():
    host = make_host(layers=2)
    assert guess_layer_template(host.model) == "model.layers.{num}"
    assert len(decoder_blocks(host.model)) == 2


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.stages = nn.ModuleList([nn.Linear(2, 2) for _ in range(5)])
        self.small = nn.ModuleList([nn.Linear(2, 2)])


def test_unknown_architecture_uses_longest_module_list_and_override():
    model = _Custom()
    assert guess_layer_template(model) == "stages.{num}"
    assert len(decoder_blocks(model, "small.{num}")) == 1


def test_bad_template_error_says_how_to_fix():
    with pytest.raises(LayerError, match="layer_template"):
        decoder_blocks(_Custom(), "encoder.{num}")
    with pytest.raises(LayerError, match=r"\{num\}"):
        decoder_blocks(_Custom(), "stages")
    with pytest.raises(LayerError, match="layer_template"):
        guess_layer_template(nn.Linear(2, 2))


def test_check_layers_negative_sorted_and_range():
    assert check_layers([-1, 0, 2, 2], num_blocks=3) == (0, 2, 3)
    with pytest.raises(LayerError, match=r"0\.\.3"):
        check_layers([4], num_blocks=3)
    with pytest.raises(LayerError):
        check_layers([], num_blocks=3)
    with pytest.raises(LayerError):
        check_layers([True], num_blocks=3)
