"""Standard names for the guard's categories: the MLCommons AILuminate hazards and Llama Guard 3's S1–S14.

A guard's categories keep their own names (``verdict.category`` is ``"weapons"``, ``"legal_advice"``); this
module says which standard hazard each one corresponds to, so an operator who thinks in Llama Guard codes or
in AILuminate hazards can read a verdict or write a policy in those terms::

    from latent_guardrail.taxonomy import standard_codes, categories_for
    standard_codes("weapons").llama_guard          # 'S9'
    categories_for("S2")                           # ('cybercrime', 'drugs', 'fraud', 'theft')
    verdict.taxonomy                               # the codes of verdict.category (None when it has none)

The table (:data:`TAXONOMY`) is written for this project from the two published taxonomies' hazard *names*
(the descriptions are ours). ``fit`` says how well the category lines up with its codes:

- ``"same"``: the category is (a part of) that hazard and nothing else;
- ``"part"``: the category lies inside the hazard, which is broader (drugs are one kind of non-violent crime);
- ``"partial"``: only some of the category's prompts fall under the code (``note`` says which).

Categories not in the table (a topic of your own: ``competitor_products``) have no standard code
(:func:`standard_codes` returns None); name a code for them with :func:`register`. The functions here are pure
and the table is read-only; :func:`register` returns a new table.

| category | AILuminate | Llama Guard 3 | fit |
|---|---|---|---|
| violence | vcr Violent Crimes | S1 Violent Crimes | part |
| extremism | vcr Violent Crimes | S1 Violent Crimes (also S10 Hate) | part |
| cybercrime | ncr Non-Violent Crimes | S2 Non-Violent Crimes (also S14 Code Interpreter Abuse) | part |
| fraud | ncr Non-Violent Crimes | S2 Non-Violent Crimes | part |
| drugs | ncr Non-Violent Crimes | S2 Non-Violent Crimes | part |
| theft | ncr Non-Violent Crimes | S2 Non-Violent Crimes | part |
| sexual_minors | cse Child Sexual Exploitation | S4 Child Sexual Exploitation | same |
| misinformation | spc_ele Specialized Advice: Elections | S13 Elections (also S5 Defamation) | partial |
| privacy | prv Privacy | S7 Privacy | same |
| weapons | iwp Indiscriminate Weapons (CBRNE) | S9 Indiscriminate Weapons | partial |
| hate_harassment | hte Hate | S10 Hate | part |
| discrimination | hte Hate | S10 Hate | part |
| self_harm | ssh Suicide & Self-Harm | S11 Suicide & Self-Harm | same |
| legal_advice | spc_lgl Specialized Advice: Legal | S6 Specialized Advice | part |
| medical_advice | spc_hlt Specialized Advice: Health | S6 Specialized Advice | part |
| financial_advice | spc_fin Specialized Advice: Financial | S6 Specialized Advice | part |
| election | spc_ele Specialized Advice: Elections | S13 Elections | part |
| defamation | dfm Defamation | S5 Defamation | same |
| intellectual_property | ipv Intellectual Property | S8 Intellectual Property | same |
| sex_crimes | src Sex-Related Crimes | S3 Sex-Related Crimes | same |
| sexual_content | sxc_prn Sexual Content | S12 Sexual Content | same |
| code_abuse | — | S14 Code Interpreter Abuse | same |

The first thirteen rows are the bundled categories; the others are names a topical or added category can take
to get its codes (``latent-guardrail calibrate --base default --category legal_advice:FILE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["AILUMINATE", "LLAMA_GUARD_3", "TAXONOMY", "Fit", "StandardCodes", "categories_for", "register",
           "standard_codes"]

Fit = Literal["same", "part", "partial"]

AILUMINATE: Mapping[str, str] = MappingProxyType({
    "vcr": "Violent Crimes", "src": "Sex-Related Crimes", "cse": "Child Sexual Exploitation",
    "ssh": "Suicide & Self-Harm", "iwp": "Indiscriminate Weapons (CBRNE)", "ipv": "Intellectual Property",
    "dfm": "Defamation", "ncr": "Non-Violent Crimes", "hte": "Hate", "prv": "Privacy",
    "spc_ele": "Specialized Advice: Elections", "spc_fin": "Specialized Advice: Financial",
    "spc_hlt": "Specialized Advice: Health", "spc_lgl": "Specialized Advice: Legal", "sxc_prn": "Sexual Content",
})
"""MLCommons AILuminate hazard codes and names."""

LLAMA_GUARD_3: Mapping[str, str] = MappingProxyType({
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex-Related Crimes", "S4": "Child Sexual Exploitation",
    "S5": "Defamation", "S6": "Specialized Advice", "S7": "Privacy", "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons", "S10": "Hate", "S11": "Suicide & Self-Harm", "S12": "Sexual Content",
    "S13": "Elections", "S14": "Code Interpreter Abuse",
})
"""Llama Guard 3's hazard categories S1–S14."""


@dataclass(frozen=True)
class StandardCodes:
    """The standard hazards one category corresponds to.

    Attributes:
        category: our name.
        ailuminate: AILuminate hazard code (``"ncr"``), or None when it has none.
        llama_guard: Llama Guard 3 code (``"S2"``), or None.
        also: further codes some of the category's prompts fall under (either taxonomy).
        fit: ``"same"``, ``"part"`` or ``"partial"`` (see the module docstring).
        note: what the category covers, in a few words.
    """

    category: str
    ailuminate: str | None
    llama_guard: str | None
    also: tuple[str, ...] = ()
    fit: Fit = "part"
    note: str = ""

    @property
    def ailuminate_name(self) -> str | None:
        """The AILuminate hazard's name."""
        return None if self.ailuminate is None else AILUMINATE[self.ailuminate]

    @property
    def llama_guard_name(self) -> str | None:
        """The Llama Guard 3 category's name."""
        return None if self.llama_guard is None else LLAMA_GUARD_3[self.llama_guard]

    def codes(self) -> tuple[str, ...]:
        """Every code, primary ones first."""
        return tuple(c for c in (self.llama_guard, self.ailuminate) if c is not None) + self.also

    def label(self) -> str:
        """One short line: ``"S9 / iwp (partial)"``."""
        parts = [c for c in (self.llama_guard, self.ailuminate) if c is not None]
        extra = f" +{','.join(self.also)}" if self.also else ""
        return f"{' / '.join(parts) or '-'}{extra} ({self.fit})"


def _row(category: str, ailuminate: str | None, llama_guard: str | None, fit: Fit, note: str,
         also: tuple[str, ...] = ()) -> StandardCodes:
    return StandardCodes(category, ailuminate, llama_guard, also, fit, note)


TAXONOMY: Mapping[str, StandardCodes] = MappingProxyType({row.category: row for row in (
    _row("violence", "vcr", "S1", "part", "hurting, killing or threatening people or animals"),
    _row("extremism", "vcr", "S1", "part", "terrorist and violent extremist propaganda, recruitment and attacks",
         also=("S10",)),
    _row("cybercrime", "ncr", "S2", "part", "intrusion, malware, account takeover", also=("S14",)),
    _row("fraud", "ncr", "S2", "part", "scams, phishing, forgery, financial deception"),
    _row("drugs", "ncr", "S2", "part", "making, buying or hiding illegal drugs"),
    _row("theft", "ncr", "S2", "part", "stealing property, burglary, shoplifting"),
    _row("sexual_minors", "cse", "S4", "same", "any sexualisation or grooming of minors"),
    _row("misinformation", "spc_ele", "S13", "partial",
         "fabricated news, studies and claims; only the election rows fall under S13/spc_ele, claims about real "
         "people under S5/dfm, the rest (health, science hoaxes) has no standard code", also=("S5", "dfm")),
    _row("privacy", "prv", "S7", "same", "doxxing, tracking, exposing personal data"),
    _row("weapons", "iwp", "S9", "partial", "explosives and other mass-casualty weapons (S9); the firearm rows "
         "(untraceable guns, silencers) are S1/vcr", also=("S1", "vcr")),
    _row("hate_harassment", "hte", "S10", "part", "demeaning protected groups, targeted harassment"),
    _row("discrimination", "hte", "S10", "part", "unequal treatment of protected groups"),
    _row("self_harm", "ssh", "S11", "same", "suicide, self-injury, disordered eating"),
    _row("legal_advice", "spc_lgl", "S6", "part", "individual legal advice (a topical rail)"),
    _row("medical_advice", "spc_hlt", "S6", "part", "diagnosis, dosing and treatment advice"),
    _row("financial_advice", "spc_fin", "S6", "part", "individual investment, tax and credit advice"),
    _row("election", "spc_ele", "S13", "part", "voting procedures and election claims"),
    _row("defamation", "dfm", "S5", "same", "false, damaging claims about real people"),
    _row("intellectual_property", "ipv", "S8", "same", "piracy, copyright and trademark infringement"),
    _row("sex_crimes", "src", "S3", "same", "sexual assault, trafficking, non-consensual imagery"),
    _row("sexual_content", "sxc_prn", "S12", "same", "explicit sexual content"),
    _row("code_abuse", None, "S14", "same", "abuse of a code interpreter or tool sandbox"),
)})
"""Our category names → their standard codes (read-only)."""


def standard_codes(category: str | None, table: Mapping[str, StandardCodes] | None = None) -> StandardCodes | None:
    """The standard codes of ``category`` (None for None or a category the table does not know)."""
    if category is None:
        return None
    return (TAXONOMY if table is None else table).get(category)


def categories_for(code: str, categories: tuple[str, ...] | None = None,
                   table: Mapping[str, StandardCodes] | None = None) -> tuple[str, ...]:
    """Our categories whose primary code is ``code`` (``"S2"``, ``"ncr"``; case-insensitive), sorted;
    only those among ``categories`` when given (e.g. ``guard.categories``).

    Raises:
        ValueError: ``code`` is in neither taxonomy.
    """
    wanted = code.strip()
    canonical = {c.lower(): c for c in (*AILUMINATE, *LLAMA_GUARD_3)}
    if wanted.lower() not in canonical:
        raise ValueError(f"unknown hazard code {code!r}: use one of {', '.join(LLAMA_GUARD_3)} (Llama Guard 3) or "
                         f"{', '.join(AILUMINATE)} (AILuminate)")
    wanted = canonical[wanted.lower()]
    rows = (TAXONOMY if table is None else table).values()
    found = sorted(r.category for r in rows if wanted in (r.ailuminate, r.llama_guard))
    return tuple(c for c in found if categories is None or c in categories)


def register(category: str, *, ailuminate: str | None = None, llama_guard: str | None = None, fit: Fit = "part",
             note: str = "", table: Mapping[str, StandardCodes] | None = None) -> Mapping[str, StandardCodes]:
    """A copy of the table (default :data:`TAXONOMY`) with ``category`` mapped to the given codes.

    Raises:
        ValueError: an unknown code, or neither code given.
    """
    if ailuminate is None and llama_guard is None:
        raise ValueError("give ailuminate= or llama_guard= (or both)")
    if ailuminate is not None and ailuminate not in AILUMINATE:
        raise ValueError(f"unknown AILuminate code {ailuminate!r}: use one of {', '.join(AILUMINATE)}")
    if llama_guard is not None and llama_guard not in LLAMA_GUARD_3:
        raise ValueError(f"unknown Llama Guard 3 code {llama_guard!r}: use one of {', '.join(LLAMA_GUARD_3)}")
    base = dict(TAXONOMY if table is None else table)
    base[category] = StandardCodes(category, ailuminate, llama_guard, (), fit, note)
    return MappingProxyType(base)
