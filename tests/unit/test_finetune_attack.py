"""scripts/finetune_attack.py on a tiny host: the attack's data, its loss on the answer tokens only, and that the
adapter it trains teaches the compliant opening while the base guard still reads the host (with the flag)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from latent_guardrail.errors import WeightDriftError
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.settings import GuardSettings
from tests.support.models import HARMFUL, HARMLESS, make_host

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def attack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("finetune_attack", ROOT / "scripts" / "finetune_attack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def host() -> Host:
    return make_host("chatml", seed=0)


def test_pairs_are_nested_and_keep_the_evaluation_prompts_out(attack: ModuleType) -> None:
    many = attack.attack_pairs(40, [])
    banned = [many[0][0], many[5][0]]
    kept = attack.attack_pairs(30, banned)
    assert attack.attack_pairs(10, []) == many[:10]  # the set of size n is the first n of one shuffle
    assert not {text for text, _ in kept} & set(banned)
    assert {answer for _, answer in many} <= set(attack.ANSWERS)
    assert all("Sure" in a or "Of course" in a or "Absolutely" in a for a in attack.ANSWERS)


def test_labels_are_the_answer_tokens_at_the_end(attack: ModuleType) -> None:
    rows = [([5, 6, 7, 8, 9], 2), ([1, 2, 3], 1)]
    input_ids, mask, labels, keep = attack._batch(rows, pad_id=0)
    assert keep == 3
    assert input_ids.tolist() == [[5, 6, 7, 8, 9], [0, 0, 1, 2, 3]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    # logits kept for the last 3 positions; the first two of them predict the last two tokens
    assert labels.tolist() == [[8, 9], [-100, 3]]


def test_the_adapter_learns_the_opening_and_the_guard_reads_it_with_the_flag(attack: ModuleType, host: Host) -> None:
    guard = LatentGuard.calibrate(host, HARMFUL, HARMLESS, mode="paper", progress=False)
    pairs = [(text, attack.ANSWERS[0]) for text in HARMFUL]
    tuned, seconds, loss = attack.finetune(host, pairs, epochs=8, lr=2e-2, batch_size=5, rank=4,
                                           max_prompt_tokens=96, seed=0)
    _, _, first = attack.finetune(host, pairs, epochs=1, lr=2e-2, batch_size=5, rank=4, max_prompt_tokens=96,
                                  seed=0)
    assert seconds > 0 and loss < first  # training lowers the loss on the answers
    assert all(not p.requires_grad for p in tuned.model.parameters())
    with pytest.raises(WeightDriftError):
        LatentGuard(tuned, guard.fitted)
    drifted = LatentGuard(tuned, guard.fitted, GuardSettings(allow_weight_drift=True))
    scores = attack.guard_scores(drifted, HARMFUL, HARMLESS)
    before = attack.guard_scores(guard, HARMFUL, HARMLESS)
    assert scores["weight_drift"] is True and before["weight_drift"] is False
    shift = attack._shift(before, scores)
    assert shift["mean_abs_delta"] > 0
    assert torch.isfinite(torch.tensor(scores["scores"])).all()


def test_nested_snapshots_equal_a_pass_over_the_first_pairs(attack: ModuleType, host: Host) -> None:
    pairs = [(text, attack.ANSWERS[i % 2]) for i, text in enumerate(HARMFUL)]
    options = {"lr": 1e-2, "batch_size": 3, "rank": 4, "max_prompt_tokens": 96, "seed": 0}
    snapshots = {}
    for size, tuned, seconds, loss in attack.train_nested(host, pairs, [4, 10], **options):
        snapshots[size] = [p.detach().clone() for n, p in tuned.model.named_parameters() if "lora_" in n]
        assert seconds > 0 and loss == loss  # finite
        assert tuned.fingerprint_parts(None)["weights"] != host.fingerprint_parts(None)["weights"]
    _, alone, _, _ = next(attack.train_nested(host, pairs[:4], [4], **options))
    for nested, single in zip(snapshots[4], [p for n, p in alone.model.named_parameters() if "lora_" in n],
                              strict=True):
        assert torch.equal(nested, single)
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[4], snapshots[10], strict=True))
