"""AALS (Eq. 5) on constructed tables, by hand; the Pareto λ* (Eq. 7) is in test_arr.py."""

from __future__ import annotations

import pytest

from routelab.errors import RoutelabError
from routelab.aals import aals_ratio, bias_reduction, select_layers


def test_bias_reduction_is_distance_to_parity():
    assert bias_reduction(0.70, 0.60) == pytest.approx(0.10)
    assert bias_reduction(0.70, 0.40) == pytest.approx(0.10)  # overshoot: |0.4 − 0.5| = 0.1
    assert bias_reduction(0.55, 0.60) == pytest.approx(-0.05)  # more bias: negative
    assert bias_reduction(0.30, 0.45) == pytest.approx(0.15)  # below parity works the same


def test_aals_ratio_and_percentile_selection_by_hand():
    # Δbias / (|ΔPPL| + 1e-6)
    assert aals_ratio(0.05, 0.5) == pytest.approx(0.05 / 0.500001)
    assert aals_ratio(0.05, -0.5) == pytest.approx(0.05 / 0.500001)
    ratios = {0: 0.1, 1: 0.4, 2: 0.2, 3: 0.3}
    # 75th percentile (linear) of [0.1, 0.2, 0.3, 0.4] = 0.3 + 0.25·0.1 = 0.325 → only layer 1
    assert select_layers(ratios, 0.75) == [1]
    # 50th percentile = 0.25 → layers 1 and 3
    assert select_layers(ratios, 0.5) == [1, 3]
    assert select_layers({0: 1.0, 1: 1.0}, 0.75) == [0]  # all equal: the best (first) layer


def test_noise_sized_bias_change_with_zero_ppl_change_blows_up_r():
    """The paper's R(l) divides by |ΔPPL| + 1e-6: a layer whose edit changes nothing measurable
    (ΔPPL = 0, a one-pair flip in Δbias) outranks a layer with a real effect."""
    real = aals_ratio(bias_reduction(0.80, 0.70), 0.20)  # 0.1 / 0.2 = 0.5
    noise = aals_ratio(bias_reduction(0.80, 0.80 - 1 / 720), 0.0)  # one of 720 pairs flips
    assert noise > 1000 * real
    assert select_layers({0: real, 1: noise, 2: 0.0, 3: -0.1}, 0.75) == [1]
