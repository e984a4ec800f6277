"""Tests for routelab.seeds: numbers as mean ± sd and verdicts as k/n, from hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

from routelab.seeds import README_END, README_START, readme_table, summarise


def _run(pref, holds):
    return {"routed": {"summary": {"pref": pref, "lambda": 8.0, "arr": -0.2, "mask": -0.2, "steer": None, "mc1": 0.8,
                                   "ppl": 3.8},
                       "truth": {"verdicts": {"arr_lowers_bias": {"holds": holds}, "stereotype_learned": {"holds": True}}}}}


def test_numbers_are_mean_and_sd_over_seeds_and_verdicts_count_seeds():
    runs = {0: _run(0.8, True), 1: _run(0.9, False), 2: _run(0.7, True)}
    md, data = summarise(runs, ["routed"])
    assert data["seeds"] == [0, 1, 2] and data["numbers"]["routed"]["pref"] == [0.8, 0.9, 0.7]
    assert "0.800 ± 0.100 (0.8, 0.9, 0.7)" in md  # sample sd of 0.8, 0.9, 0.7 is 0.1
    assert data["verdicts"]["routed"]["arr_lowers_bias"] == {"held": 2, "of": 3, "failed": [1]}
    assert "| routed | arr_lowers_bias | 2/3 | 1 |" in md and "| routed | stereotype_learned | 3/3 | — |" in md
    assert "— (—, —, —)" in md  # a number no seed has (steer skipped) is shown as missing, not as 0


MODELS = ("control", "diffuse", "routed", "routed_null", "nonrouted")


def test_committed_seed_summary_is_seeds_0_to_4_and_agrees_with_the_committed_seed_0():
    """docs/seeds.json (written by `routelab seeds` after the seed experiments) against the committed
    seed-0 outputs: seeds 0–4, seed 0's numbers are metrics/summary/<m>.json's, the checks are
    metrics/ground_truth/<m>.json's, and seed 0 is listed as failed exactly where its committed
    verdict fails. It does not require every check to hold on every seed (issue 18's bar): the
    failures are listed in README.md and docs/testbeds.md#seeds as open, and this test keeps the
    summary from drifting from the pipeline it claims to describe."""
    root = Path(__file__).resolve().parents[1]
    data = json.loads((root / "docs" / "seeds.json").read_text())
    assert data["seeds"] == [0, 1, 2, 3, 4]
    for m in MODELS:
        summary = json.loads((root / "metrics" / "summary" / f"{m}.json").read_text())
        truth = json.loads((root / "metrics" / "ground_truth" / f"{m}.json").read_text())
        for key, values in data["numbers"][m].items():
            assert len(values) == 5 and values[0] == summary.get(key), (m, key)
        assert set(data["verdicts"][m]) == set(truth["verdicts"]), m
        for check, held in data["verdicts"][m].items():
            assert held["of"] == 5 and held["held"] == 5 - len(held["failed"]), (m, check, held)
            assert (0 in held["failed"]) == (not truth["verdicts"][check]["holds"]), (m, check)


def test_readme_table_counts_seeds_with_a_value_and_lists_failures_by_seed():
    data = {"seeds": [0, 1, 2], "numbers": {"routed": {"pref": [0.8, 0.9, 0.7], "lambda": [8.0, 0.0, 4.0],
                                                       "arr": [-0.3, None, -0.1], "mask": [0.1, 0.2, 0.3],
                                                       "steer": [None, None, None], "mc1": [0.5, 0.5, 0.5], "ppl": [4, 4, 4]}},
            "verdicts": {"routed": {"a": {"held": 3, "of": 3, "failed": []}, "b": {"held": 1, "of": 3, "failed": [1, 2]}}}}
    rows = readme_table(data, ["routed"]).splitlines()
    assert rows[0] == "| over seeds 0–2: mean ± sd | routed |"
    assert rows[2] == "| CrowS-style preference, test split | 0.800 ± 0.100 |"
    assert rows[3] == "| λ* (seeds in order) | 8, 0, 4 |"
    assert rows[4] == "| ARR at λ*: Δ preference | −0.200 ± 0.141 (2 of 3) |"  # sd of −0.3, −0.1 is 0.1414
    assert rows[5] == "| top-n φ experts masked: Δ preference | +0.200 ± 0.100 |"
    assert rows[6] == "| SteerMoE, detected experts off: Δ preference | — |"
    assert rows[-1] == "| ground-truth checks | 1 of 2 held on every seed; failed: `b` (seed 1, 2) |"


def test_committed_readme_seeds_table_is_the_one_docs_seeds_json_gives():
    root = Path(__file__).resolve().parents[1]
    data = json.loads((root / "docs" / "seeds.json").read_text())
    readme = (root / "README.md").read_text()
    assert f"{README_START}\n{readme_table(data, MODELS)}\n{README_END}" in readme
