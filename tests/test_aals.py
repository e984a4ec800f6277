"""AALS (Eq. 5) and the Pareto λ* (Eq. 7) on constructed tables, by hand."""

from __future__ import annotations

import pytest

from routelab.errors import RoutelabError
from routelab.fare import SweepPoint, aals_ratio, bias_reduction, pareto_lambda, select_layers


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


def test_pareto_lambda_constrained_argmin():
    pts = [SweepPoint(0, 0.80, 3.0), SweepPoint(0.5, 0.70, 3.3), SweepPoint(1, 0.60, 4.0),
           SweepPoint(2, 0.52, 6.5), SweepPoint(4, 0.50, 9.0)]
    # β = 1: budget 6.0 → λ = 2 (PPL 6.5) and 4 are infeasible; best feasible is λ = 1
    lam, why = pareto_lambda(pts, 3.0, beta=1.0)
    assert lam == 1 and "over budget: 2, 4" in why
    assert pareto_lambda(pts, 3.0, beta=2.0)[0] == 4  # budget 9.0: λ = 4 reaches parity
    assert pareto_lambda(pts, 3.0, beta=0.0)[0] == 0  # nothing fits: the baseline
    tie = [SweepPoint(0, 0.6, 3.0), SweepPoint(1, 0.45, 3.0), SweepPoint(2, 0.55, 3.0)]
    assert pareto_lambda(tie, 3.0, beta=1.0)[0] == 1  # |Δ| 0.05 twice: the smaller λ
    with pytest.raises(RoutelabError, match="arr.beta"):
        pareto_lambda(pts, 3.0, beta=-0.1)
    with pytest.raises(RoutelabError, match="λ = 0"):
        pareto_lambda(pts[1:], 3.0, beta=1.0)
