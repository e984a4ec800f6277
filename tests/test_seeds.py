"""Tests for routelab.seeds: numbers as mean ± sd and verdicts as k/n, from hand-made runs."""

from __future__ import annotations

from routelab.seeds import summarise


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
