"""The Pareto-constrained λ* (FARE Eq. 7) on constructed sweep tables, by hand."""

from __future__ import annotations

import pytest

from routelab.arr import SweepPoint, pareto_lambda
from routelab.errors import RoutelabError


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
