"""Caption word counts, co-occurrence and PMI on small tables with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.checks.bias import stats, wordlists
from audit.checks.bias.captions import CaptionCounter

CAPTIONS = [
    "A woman doctor at work",  # female, doctor
    "a MAN who is a doctor",  # male, doctor
    "the doctor's office",  # doctor
    "portrait of a woman",  # female
    "a nurse and her cat",  # female, nurse
    "a cat on a mat",  # nothing
    "",  # empty: not a caption
    None,
]


def test_word_lists_are_documented_and_well_formed():
    for name in wordlists.FILES:
        text = (wordlists.WORDLISTS / name).read_text("utf-8")
        assert "# Source:" in text and "# Cite:" in text, f"{name} must cite its source"
    lex = wordlists.lexicon()
    assert set(lex.gender.values()) == {"female", "male", "nonbinary"}
    assert (
        lex.occupations["nurses"] == "nurse"
        and lex.occupations["police officers"] == "police officer"
    )
    assert all(g for g in lex.occupation_group.values())
    for tld, (country, note) in wordlists.cctld().items():
        assert len(tld) == 2 and country and note in ("", "generic-use")
    assert len(wordlists.cctld()) >= 240


def test_plurals():
    assert wordlists.plural("secretary") == "secretaries"
    assert wordlists.plural("attorney") == "attorneys"
    assert wordlists.plural("fisherman") == "fishermen"
    assert wordlists.plural("truck driver") == "truck drivers"
    assert wordlists.plural("coach") == "coaches"


def test_whole_word_matching():
    lex = wordlists.lexicon()
    groups, terms, identity, occ = lex.find(
        "A Non-Binary nurse, her Doctors and the womanhood of theory"
    )
    assert groups == {"nonbinary", "female"}
    assert terms == {"non binary", "her"}  # not "woman" inside "womanhood", not "he" inside "the"
    assert occ == {"nurse", "doctor"}
    assert lex.find("a police officer with a baby")[3] == {"police officer"}
    assert ("age", "baby") in lex.find("a police officer with a baby")[2]


def test_counts_shares_and_pmi_by_hand():
    c = CaptionCounter(pmi_min_count=1)  # every co-occurrence counts, to check the arithmetic
    c.add(CAPTIONS)
    res = c.result(reps=500, rng=np.random.default_rng(0))
    assert res["captions"] == 6 and res["empty_captions"] == 2
    g = res["gender"]
    assert g["captions_with_term"]["female"]["captions"] == 3
    assert g["captions_with_term"]["male"]["captions"] == 1
    assert g["captions_with_term"]["female"]["share"] == pytest.approx(0.5)
    assert g["female_to_male_ratio"]["value"] == pytest.approx(3.0)
    assert g["female_share_of_gendered"]["value"] == pytest.approx(0.75)
    occ = {o["occupation"]: o for o in res["occupations"]}
    doc, nurse = occ["doctor"], occ["nurse"]
    assert (doc["captions"], doc["with_female"], doc["with_male"]) == (3, 1, 1)
    assert doc["female_share_of_gendered"] == pytest.approx(0.5)
    # PMI(doctor, female) = log(p(d,f) / (p(d) p(f))) = log((1/6) / ((3/6)(3/6))) = log(2/3)
    assert doc["pmi_female"] == pytest.approx(math.log(2 / 3))
    assert doc["pmi_male"] == pytest.approx(math.log((1 / 6) / ((3 / 6) * (1 / 6))))
    assert nurse["pmi_female"] == pytest.approx(math.log(2)) and nurse["pmi_male"] is None
    for fig in (g["captions_with_term"]["female"], g["female_to_male_ratio"]):
        lo, hi = fig["ci95"]
        assert lo <= (fig.get("share") or fig.get("value")) <= (hi if hi is not None else math.inf)


def test_small_counts_say_too_few_and_pmi_is_omitted():
    c = CaptionCounter()  # default minimums
    c.add(CAPTIONS)
    res = c.result(reps=200, rng=np.random.default_rng(0))
    doc = {o["occupation"]: o for o in res["occupations"]}["doctor"]
    # 2 gendered mentions: a share is stated but flagged, and its interval is honest (Wilson)
    assert doc["too_few"] and doc["female_share_ci95"][1] - doc["female_share_ci95"][0] > 0.5
    # 1 co-occurrence each: PMI omitted, no interval running to -inf
    assert doc["pmi_female"] is None and doc["pmi_female_too_few"]
    assert "pmi_female_ci95" not in doc
    assert res["gender"]["female_share_of_gendered"]["too_few"]


def test_wilson_interval_known_values():
    # Wilson (1927); values as in Agresti & Coull (1998) / statsmodels proportion_confint(method="wilson")
    lo, hi = stats.wilson(1, 1)
    assert lo == pytest.approx(0.2065, abs=1e-4) and hi == pytest.approx(1.0)
    lo, hi = stats.wilson(0, 10)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = stats.wilson(30, 100)
    assert lo == pytest.approx(0.2189, abs=1e-4) and hi == pytest.approx(0.3958, abs=1e-4)
    assert stats.wilson(0, 0) == [None, None]
    assert stats.proportion(3, 4)["too_few"] and not stats.proportion(30, 100)["too_few"]


def test_occupation_intervals_contain_estimates_and_narrow_with_n():
    rng = np.random.default_rng(0)
    base = ["a nurse and her patient"] * 30 + ["a male nurse"] * 10 + ["a landscape"] * 60

    def run(copies: int) -> dict:
        c = CaptionCounter()
        c.add(base * copies)
        return {o["occupation"]: o for o in c.result(400, rng)["occupations"]}["nurse"]

    small, big = run(1), run(20)
    assert (
        small["female_share_of_gendered"] == pytest.approx(0.75) == big["female_share_of_gendered"]
    )
    for o in (small, big):
        assert o["female_share_ci95"][0] <= 0.75 <= o["female_share_ci95"][1]
        assert o["pmi_female_ci95"][0] <= o["pmi_female"] <= o["pmi_female_ci95"][1]
    width = lambda o: o["female_share_ci95"][1] - o["female_share_ci95"][0]  # noqa: E731
    assert width(big) < width(small) / 2
