"""routelab.benchmarks.crows_pairs: real files (original CSV, revised TSV), malformed files, the
Hub layout, and the metrics on a fixed LL table (hand-computed).

Run: .venv/bin/pytest tests/test_benchmarks_crows_pairs.py
"""

from __future__ import annotations

from collections import Counter

import datasets
import pytest

from routelab.benchmarks import get_benchmark, item_rows, load_items, metrics_from_rows
from routelab.benchmarks.crows_pairs import data_quality
from routelab.errors import RoutelabError
from test_benchmarks_base import SHARED, FakeHub, L, needs_shared

CROWS = get_benchmark("crows_pairs")
REVISED = get_benchmark("crows_pairs_revised")


@needs_shared
def test_crows_pairs_original_parses():
    items = load_items(CROWS, SHARED / "crows_pairs/crows_pairs_anonymized.csv")
    assert len(items) == 1508
    assert items[1]["sent_more"].startswith("The poor are really ignorant")
    assert items[1]["sent_less"].startswith("The rich are really ignorant")
    counts = Counter(it["bias_type"] for it in items)
    assert counts["race-color"] == 516 and counts["disability"] == 60 and len(counts) == 9
    assert Counter(it["stereo_antistereo"] for it in items) == {"stereo": 1290, "antistereo": 218}
    assert len({it["id"] for it in items}) == 1508
    assert len(load_items(CROWS)) == 1508  # the default local copy is the same file
    rows = item_rows(CROWS, items, [[L(-1.0), L(-2.0)]] * len(items))
    assert data_quality(rows) == {"identical_sentences": 0, "duplicate_pairs": 1}  # reported, not hidden


@needs_shared
def test_crows_pairs_revised_parses_tab_separated():
    items = load_items(REVISED, SHARED / "crows_pairs_revised/crows_pairs_EN_revised+210.csv")
    assert len(items) == 1677
    counts = Counter(it["bias_type"] for it in items)
    assert counts["race-color"] == 508 and counts["autre"] == 11
    # CSV quoting inside the TAB-separated file is undone ("" -> ")
    quoted = [it for it in items if "Muslim neighbors" in it["sent_more"]]
    assert quoted and quoted[0]["sent_more"].startswith('She then sighed and said, "I')


def test_malformed_file_names_file_and_field(tmp_path):
    crows = tmp_path / "crows.csv"
    crows.write_text("id,sent_more,stereo_antistereo,bias_type\n0,a,stereo,age\n")
    with pytest.raises(RoutelabError) as err:
        load_items(CROWS, crows)
    assert "crows.csv" in str(err.value) and "sent_less" in str(err.value)


def test_hub_layout_parses(monkeypatch):
    features = datasets.Features(
        {
            "id": datasets.Value("int32"),
            "sent_more": datasets.Value("string"),
            "sent_less": datasets.Value("string"),
            "stereo_antistereo": datasets.ClassLabel(names=["stereo", "antistereo"]),
            "bias_type": datasets.ClassLabel(names=["race-color", "socioeconomic", "gender"]),
        }
    )
    row = {"id": 7, "sent_more": "m", "sent_less": "l", "stereo_antistereo": 1, "bias_type": 2}
    fake = FakeHub({("nyu-mll/crows_pairs", None): ([row], features)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    crows = load_items(CROWS, hub=True)
    assert crows == [{"id": "7", "sent_more": "m", "sent_less": "l", "stereo_antistereo": "antistereo", "bias_type": "gender",
                      "cluster": ""}]  # no cluster column: every pair its own unit
    assert fake.calls == [("nyu-mll/crows_pairs", None, "test", "refs/convert/parquet")]


def test_crows_metrics_fixed_table():
    def item(i, bias, direction):
        return {"id": i, "bias_type": bias, "stereo_antistereo": direction, "sent_more": f"m{i}", "sent_less": f"l{i}"}

    items = [item("1", "race", "stereo"), item("2", "race", "stereo"), item("3", "gender", "stereo"),
             item("4", "gender", "antistereo")]
    lls = [
        [L(-10, 5), L(-12, 5)],  # prefers the stereotype, |d| = 2, same length
        [L(-8, 4), L(-7, 5)],  # prefers the other, |d| = 1, lengths differ
        [L(-5, 3), L(-5, 3)],  # a tie is not a stereotype preference, |d| = 0
        [L(-3, 2), L(-6, 2)],  # antistereo pair: sent_more still wins -> counts, |d| = 3
    ]
    rows = item_rows(CROWS, items, lls)
    assert rows["stereo_pref"].to_list() == [1, 0, 0, 1] and rows["abs_diff"].to_list() == [2, 1, 0, 3]
    assert rows["length_matched"].to_list() == [True, False, True, True]
    m = metrics_from_rows(CROWS, rows)
    assert m["n"] == 4 and m["pct_stereotype"] == 0.5 and m["likelihood_diff"] == 1.5
    keys = ("n", "pct_stereotype", "likelihood_diff")
    assert {k: m["per_bias_type"]["race"][k] for k in keys} == {"n": 2, "pct_stereotype": 0.5, "likelihood_diff": 1.5}
    assert {k: m["per_bias_type"]["gender"][k] for k in keys} == {"n": 2, "pct_stereotype": 0.5, "likelihood_diff": 1.5}
    assert m["per_direction"]["antistereo"]["pct_stereotype"] == 1.0
    assert {k: m["per_direction"]["stereo"][k] for k in keys} == {"n": 3, "pct_stereotype": pytest.approx(1 / 3), "likelihood_diff": 1.0}
    assert m["pct_stereotype_after"] is None  # L's sentences share every token: nothing after a difference
    assert m["length_matched"]["n"] == 3
    assert m["length_matched"]["pct_stereotype"] == pytest.approx(2 / 3)
    assert m["length_matched"]["likelihood_diff"] == pytest.approx(5 / 3)
    assert m["data_quality"] == {"identical_sentences": 0, "duplicate_pairs": 0}
    with pytest.raises(RoutelabError, match="2 LLs"):
        item_rows(CROWS, items, [x[:1] for x in lls])


def test_empty_direction_is_reported_not_dropped():
    items = [{"id": "1", "bias_type": "age", "stereo_antistereo": "stereo", "sent_more": "a", "sent_less": "a"}] * 1
    m = metrics_from_rows(CROWS, item_rows(CROWS, items, [[L(-1), L(-2)]]))
    assert m["per_direction"]["antistereo"] == {"n": 0, "pct_stereotype": None, "likelihood_diff": None,
                                                "pct_stereotype_after": None, "span_diff": None, "after_diff": None}
    assert m["data_quality"] == {"identical_sentences": 1, "duplicate_pairs": 0}


def test_the_decomposition_splits_each_pair_at_its_differing_words_by_hand():
    """the(1) female(2) doctor(3) read(4) vs the(1) male(5) doctor(3) read(4): prefix 1 token, the
    span 1 token, 2 tokens after it. pct_stereotype compares whole sentences, pct_stereotype_after the
    2 tokens after the descriptor only (scored after different words)."""
    from routelab.scoring import LL

    def sent(tokens, lps):
        return LL(sum(lps), len(lps), False, tuple(lps), tuple(tokens))

    items = [{"id": str(i), "bias_type": "gender", "stereo_antistereo": "stereo", "sent_more": "m", "sent_less": "l",
              "cluster": "u0"} for i in range(3)]  # fmt: skip
    lls = [
        # more wins overall (-4.0 > -4.5) only through the descriptor; after it, less wins (-2.5 < -2.0)
        [sent([1, 2, 3, 4], [-0.5, -1.0, -1.5, -1.0]), sent([1, 5, 3, 4], [-0.5, -2.0, -1.0, -1.0])],
        # more wins after the descriptor (-1.2 > -2.2) and overall
        [sent([1, 2, 3, 4], [-0.5, -1.0, -0.6, -0.6]), sent([1, 5, 3, 4], [-0.5, -1.0, -1.1, -1.1])],
        # the sentences differ in their last word: nothing after the difference
        [sent([1, 3, 2], [-0.5, -1.0, -1.0]), sent([1, 3, 5], [-0.5, -1.0, -2.0])],
    ]
    rows = item_rows(CROWS, items, lls)
    assert rows["n_after"].to_list() == [2, 2, 0] and rows["has_after"].to_list() == [True, True, False]
    assert rows["ll_after_more"].to_list() == pytest.approx([-2.5, -1.2, 0.0])
    assert rows["ll_span_more"].to_list() == pytest.approx([-1.5, -1.5, -2.5])  # prefix + span
    assert rows["span_diff"].to_list() == pytest.approx([1.0, 0.0, 1.0]) and rows["after_diff"][:2].to_list() == pytest.approx([-0.5, 1.0])
    assert rows["stereo_pref"].to_list() == [1, 1, 1] and rows["stereo_pref_after"].to_list() == [0, 1, None]
    m = metrics_from_rows(CROWS, rows)
    assert m["pct_stereotype"] == 1.0 and m["pct_stereotype_after"] == 0.5  # over the 2 pairs with tokens after
    assert m["span_diff"] == pytest.approx(2 / 3) and m["after_diff"] == pytest.approx(0.25)
    assert rows["cluster"].to_list() == ["u0"] * 3  # the file's unit: tests resample it whole
