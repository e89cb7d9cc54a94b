"""The standard-code table: every bundled category is mapped, codes are real, lookups and registration."""

from __future__ import annotations

import pytest

from latent_guardrail.datasets import read_calibration_sets
from latent_guardrail.taxonomy import AILUMINATE, LLAMA_GUARD_3, TAXONOMY, categories_for, register, standard_codes
from latent_guardrail.verdict import Verdict


def test_every_bundled_category_has_codes_of_both_taxonomies() -> None:
    harmful, _ = read_calibration_sets()
    bundled = {row.category for row in harmful if row.category}
    assert bundled, "the bundled harmful sets name their categories"
    missing = sorted(c for c in bundled if standard_codes(c) is None)
    assert missing == []
    for name in bundled:
        codes = standard_codes(name)
        assert codes is not None and codes.llama_guard in LLAMA_GUARD_3 and codes.ailuminate in AILUMINATE


def test_every_code_in_the_table_exists_and_llama_guard_has_fourteen() -> None:
    assert list(LLAMA_GUARD_3) == [f"S{i}" for i in range(1, 15)]
    for row in TAXONOMY.values():
        assert row.llama_guard is None or row.llama_guard in LLAMA_GUARD_3
        assert row.ailuminate is None or row.ailuminate in AILUMINATE
        assert all(code in LLAMA_GUARD_3 or code in AILUMINATE for code in row.also)
        assert row.fit in ("same", "part", "partial")
    assert {r.llama_guard for r in TAXONOMY.values()} == set(LLAMA_GUARD_3)   # every S-code is reachable


def test_lookups() -> None:
    weapons = standard_codes("weapons")
    assert weapons is not None and weapons.llama_guard == "S9" and weapons.llama_guard_name == "Indiscriminate Weapons"
    assert weapons.label().startswith("S9 / iwp")
    legal = standard_codes("legal_advice")
    assert legal is not None and (legal.llama_guard, legal.ailuminate) == ("S6", "spc_lgl")
    assert standard_codes(None) is None and standard_codes("competitor_products") is None
    assert categories_for("s2") == ("cybercrime", "drugs", "fraud", "theft")
    assert categories_for("ncr", ("drugs", "weapons")) == ("drugs",)
    with pytest.raises(ValueError, match="unknown hazard code 'S15'"):
        categories_for("S15")


def test_register_returns_a_new_table() -> None:
    table = register("competitor_products", llama_guard="S6", note="our rivals' products")
    assert standard_codes("competitor_products", table) is not None
    assert standard_codes("competitor_products") is None           # the module's table is unchanged
    with pytest.raises(ValueError, match="unknown Llama Guard 3 code"):
        register("x", llama_guard="S99")
    with pytest.raises(ValueError, match="give ailuminate"):
        register("x")


def test_a_verdict_names_the_codes_of_its_category() -> None:
    verdict = Verdict(harmful=True, score=2.0, threshold=0.0, mode="pooled", category="drugs")
    assert verdict.taxonomy is not None and verdict.taxonomy.llama_guard == "S2"
    assert Verdict(harmful=False, score=-1.0, threshold=0.0, mode="pooled").taxonomy is None
    assert "taxonomy" not in verdict.model_dump()             # a helper, not a field: verdict JSON is unchanged
