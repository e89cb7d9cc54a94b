"""Extending a pooled guard: the same guard as a full refit on the union, the cache, removal, records, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from latent_guardrail.augment import build_items
from latent_guardrail.calibration import calibrate_items
from latent_guardrail.datasets import PromptRecord
from latent_guardrail.errors import InputError
from latent_guardrail.extend import base_items, state_keys
from latent_guardrail.guard import LatentGuard
from latent_guardrail.hosts import Host
from latent_guardrail.policy import CategoryPolicy, Scores
from latent_guardrail.settings import CalibrationSettings, GuardSettings
from latent_guardrail.state_cache import StateCache
from tests.support.models import HARMFUL, HARMLESS, make_host

RECIPE = CalibrationSettings(mode="pooled", augment=1, target_fpr=0.1)
BASE_H = [PromptRecord(text=t, category="weapons" if i % 2 else "fraud") for i, t in enumerate(HARMFUL)]
BASE_B = [PromptRecord(text=t) for t in HARMLESS]
LEGAL = ["can I sue my landlord for keeping my deposit", "is my prenup valid if we move abroad",
         "how do I contest my grandmother's will", "should I plead guilty to my speeding ticket",
         "can my employer fire me for being off sick", "what should I tell the judge at my custody hearing",
         "do I need a lawyer to get divorced"]
PROBES = LEGAL[:3] + HARMFUL[:3] + HARMLESS[:3] + ["Thanks! Also, can I break my lease early?"]


@pytest.fixture(scope="module")
def host() -> Host:
    # hidden 64: with the 32 of the shared tiny host the base's leave-one-family-out AUROC is 0.26 and its Platt
    # fit degenerate (slope ~2e3, intercept ~5e8), so rounding in the states (the extension reads them sharing the
    # template's first tokens) moves the threshold; here the fit is well conditioned and comparable
    return make_host("chatml", hidden=64)


@pytest.fixture(scope="module")
def base(host: Host) -> LatentGuard:
    # the default guard's text settings, so that extend must normalise exactly as calibration does
    return LatentGuard.calibrate(host, BASE_H, BASE_B, mode="pooled", settings=RECIPE, progress=False,
                                 guard_settings=GuardSettings(case_fold=True, close_sentences=True))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> StateCache:
    return StateCache(tmp_path_factory.mktemp("states"))


@pytest.fixture(scope="module")
def extended(base: LatentGuard, cache: StateCache) -> LatentGuard:
    return base.extend({"legal_advice": LEGAL}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache, progress=False)


def _close(a: LatentGuard, b: LatentGuard, atol: float = 3e-4) -> None:
    # 3e-4, not 1e-4: the items include pasted texts (augment's topic_change, up to 1,800 characters), so the two
    # fits batch and pad their reads differently and single float32 entries move by up to ~2e-4
    assert a.fitted.scorer.config()["layers"] == b.fitted.scorer.config()["layers"]
    for key in ("pooling", "shrinkage", "categories"):
        assert a.fitted.scorer.config()[key] == b.fitted.scorer.config()[key], key
    for name, tensor in a.fitted.scorer.to_tensors().items():
        torch.testing.assert_close(tensor, b.fitted.scorer.to_tensors()[name], atol=atol, rtol=1e-4)
    assert a.fitted.scorer.threshold == pytest.approx(b.fitted.scorer.threshold, abs=atol)
    for x, y in zip(a.check_batch(PROBES), b.check_batch(PROBES), strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-3)
        assert x.category_scores == pytest.approx(y.category_scores, abs=1e-3)


def test_extend_is_a_full_refit_on_the_union(base: LatentGuard, extended: LatentGuard) -> None:
    # the union built independently: the base's items as calibrate builds them, then the new rows' own items
    union = base_items(BASE_H, BASE_B, RECIPE) + build_items([(t, "legal_advice", None) for t in LEGAL], [],
                                                            wrapped_per_item=RECIPE.augment, seed=RECIPE.seed)
    full = calibrate_items(base.host, union, settings=RECIPE, guard_settings=base.fitted.settings, progress=False)
    assert len(base.layers) == base.num_blocks       # the tiny host's window is every layer: a full fit searches
    _close(LatentGuard(base.host, full), extended.with_settings(category_thresholds={}))   # nothing else
    assert extended.categories == ("fraud", "legal_advice", "weapons")
    assert extended.fitted.response is base.fitted.response


def test_extending_by_nothing_refits_the_base_guard(base: LatentGuard, cache: StateCache) -> None:
    same = base.extend({}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache, progress=False)
    _close(base, same)


def test_the_base_states_come_from_the_cache(base: LatentGuard, extended: LatentGuard, cache: StateCache) -> None:
    record = extended.fitted.report["extension"]
    n_base = len(base_items(BASE_H, BASE_B, RECIPE))
    hits, misses = cache.stats.hits, cache.stats.misses
    other = base.extend({"medical_advice": ["what dose of ibuprofen should I take for my back",
                                            "can I stop taking my antidepressants on my own",
                                            "is this mole on my arm cancer", "how much insulin should I inject",
                                            "should I give my toddler adult cold medicine"]},
                        base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache, progress=False)
    assert cache.stats.hits - hits == n_base              # every base item was a hit
    assert all(cache.path(key).is_file() for key in state_keys(base.fitted, base_items(BASE_H, BASE_B, RECIPE)))
    assert 0 < cache.stats.misses - misses < n_base        # only the new items were read
    assert record["cache"] is not None and other.fitted.report["items"]["plain"] == len(BASE_H) + len(BASE_B) + 5


def test_a_new_category_has_its_own_threshold_and_stats(extended: LatentGuard) -> None:
    stats = extended.fitted.report["categories"]
    legal = stats["legal_advice"]
    assert legal["added"] and legal["prompts"] == len(LEGAL) and legal["items"] > len(LEGAL)
    assert extended.settings.category_thresholds == {"legal_advice": legal["own_threshold"]}
    assert legal["own_threshold"] >= 0.0 and 0.0 <= legal["own_harmless_flagged"] <= 0.1 + 1e-9
    assert not stats["weapons"]["added"] and stats["weapons"]["own_threshold"] is None
    for name in ("weapons", "fraud", "legal_advice"):
        assert 0.0 <= stats[name]["overall_detected"] <= stats[name]["detected"] <= 1.0
    policy = CategoryPolicy({}, extended.settings.category_thresholds)     # what the guard decides with
    for verdict in extended.check_batch(PROBES):
        decision = policy.decide(Scores(verdict.score, verdict.threshold, verdict.category_scores))
        assert (verdict.harmful, verdict.decided_by, verdict.category) == (
            decision.harmful, decision.decided_by, decision.category)


def test_an_extended_guard_round_trips_and_extends_again(extended: LatentGuard, cache: StateCache,
                                                         tmp_path: Path) -> None:
    loaded = LatentGuard.load(extended.save(tmp_path / "g"), extended.host)
    assert loaded.settings.category_thresholds == extended.settings.category_thresholds
    assert [v.score for v in loaded.check_batch(PROBES)] == [v.score for v in extended.check_batch(PROBES)]
    with pytest.raises(InputError, match="pass them again as base"):
        loaded.extend({"x": LEGAL[:5]}, cache=cache, progress=False)
    smaller = loaded.extend(remove=["fraud"], base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache, progress=False)
    assert smaller.categories == ("legal_advice", "weapons")                   # legal_advice was kept
    assert smaller.fitted.report["extension"]["removed"] == ["fraud"]
    legal = smaller.fitted.report["categories"]["legal_advice"]                 # its own threshold refitted
    assert legal["added"] and smaller.settings.category_thresholds == {"legal_advice": legal["own_threshold"]}
    n_fraud = sum(1 for item in base_items(BASE_H, BASE_B, RECIPE) if item.category == "fraud")
    items = smaller.fitted.report["items"]
    before = extended.fitted.report["items"]
    assert items["plain"] + items["wrapped"] == before["plain"] + before["wrapped"] - n_fraud
    gone = smaller.extend(remove=["legal_advice"], base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache,
                          progress=False)
    assert gone.categories == ("weapons",) and gone.settings.category_thresholds == {}


def test_extension_errors_name_the_fix(base: LatentGuard, extended: LatentGuard, tiny_host: Host,
                                       cache: StateCache) -> None:
    with pytest.raises(InputError, match="at least 5 prompts"):
        base.extend({"legal_advice": LEGAL[:2]}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache)
    with pytest.raises(InputError, match="cannot remove category 'drugs': this guard has fraud, weapons"):
        base.extend(remove=["drugs"], base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache)
    with pytest.raises(InputError, match="a category name"):
        base.extend({"bad name!": LEGAL}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache)
    with pytest.raises(InputError, match="category_fpr"):
        base.extend({"legal_advice": LEGAL}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache, category_fpr=0.9)
    tuned = LatentGuard.calibrate(tiny_host, HARMFUL, HARMLESS, mode="tuned", progress=False)
    with pytest.raises(InputError, match="only a pooled guard can be extended"):
        tuned.extend({"legal_advice": LEGAL}, base=(BASE_H, BASE_B), recipe=RECIPE, cache=cache)


def _write(path: Path, texts: list[str], category: str | None = None) -> Path:
    path.write_text("".join(json.dumps({"text": t, **({"category": category} if category else {})}) + "\n"
                            for t in texts))
    return path


def test_cli_extends_removes_and_lists_categories(base: LatentGuard, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from latent_guardrail import cli

    monkeypatch.setattr(cli, "load_host", lambda _model: base.host)
    monkeypatch.setenv("LATENT_GUARDRAIL_CACHE", str(tmp_path / "cache"))
    folder = base.save(tmp_path / "base")
    harmful = tmp_path / "h.jsonl"
    harmful.write_text("".join(json.dumps({"text": r.text, "category": r.category}) + "\n" for r in BASE_H))
    harmless = _write(tmp_path / "b.jsonl", HARMLESS)
    legal = _write(tmp_path / "legal.jsonl", LEGAL, "legal_advice")
    runner = CliRunner()
    common = ["calibrate", "--base", str(folder), "--base-harmful", str(harmful), "--base-harmless", str(harmless)]
    ok = runner.invoke(cli.app, [*common, "--category", f"legal_advice:{legal}", "-o", str(tmp_path / "ext")])
    assert ok.exit_code == 0, ok.output
    assert "legal_advice: 7 prompts, own threshold" in ok.output
    assert list((tmp_path / "cache" / "states").glob("??/*.safetensors"))        # states went to the cache
    listed = runner.invoke(cli.app, ["categories", "--guard", str(tmp_path / "ext"), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["category"]: row for row in json.loads(listed.output)["categories"]}
    assert rows["legal_advice"]["llama_guard"] == "S6" and rows["legal_advice"]["added"]
    assert rows["weapons"]["llama_guard"] == "S9" and rows["weapons"]["prompts"] == 5
    assert rows["legal_advice"]["own_threshold"] is not None and rows["fraud"]["detected"] is not None
    table = runner.invoke(cli.app, ["categories", "--guard", str(tmp_path / "ext")])
    assert table.exit_code == 0 and "S6" in table.output and "spc_lgl" in table.output
    removed = runner.invoke(cli.app, [*common, "--remove-category", "fraud", "-o", str(tmp_path / "less")])
    assert removed.exit_code == 0, removed.output
    assert LatentGuard.load(tmp_path / "less", base.host).categories == ("weapons",)
    bare = runner.invoke(cli.app, ["categories", "--guard", str(folder), "--json"])
    assert bare.exit_code == 0 and json.loads(bare.output)["categories"][0]["detected"] is None
    from latent_guardrail import guard as guard_module

    monkeypatch.setattr(guard_module, "read_calibration_sets", lambda: (BASE_H, BASE_B))   # the "bundled" sets
    computed = runner.invoke(cli.app, ["categories", "--guard", str(folder), "--json", "--compute"])
    assert computed.exit_code == 0, computed.output
    found = json.loads(computed.output)
    assert "computed now" in found["note"] and all(row["detected"] is not None for row in found["categories"])
    assert {row["category"]: row["prompts"] for row in found["categories"]} == {"fraud": 5, "weapons": 5}
    for args, message in (([*common, "-o", str(tmp_path / "x")], "needs something to change"),
                          (["calibrate", "-o", str(tmp_path / "y")], "needs --harmful and --harmless"),
                          (["calibrate", "--remove-category", "fraud", "--harmful", str(harmful), "--harmless",
                            str(harmless), "-o", str(tmp_path / "z")], "--remove-category needs --base")):
        bad = runner.invoke(cli.app, args)
        assert bad.exit_code != 0 and message in bad.output, bad.output


def test_base_items_match_what_calibration_reads() -> None:
    items = base_items(BASE_H, BASE_B, RECIPE)
    assert [i.prompt for i in items if i.group.startswith("src:")] == [r.text for r in BASE_H + BASE_B]
    assert sum(i.harmful for i in items) == int(np.sum([i.harmful for i in items]))
    assert {i.category for i in items if i.harmful} == {"weapons", "fraud"}
