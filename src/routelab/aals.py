"""FARE Stage 3 decisions: AALS layer selection (Eq. 5) and the Pareto-constrained λ* (Eq. 7).

Pure functions on small tables (docs/method.md §3), used by the `aals` and `arr_sweep` stages:

    delta_bias = bias_reduction(pref_base, pref_layer)          # toward parity 0.5
    R = aals_ratio(delta_bias, ppl_layer - ppl_base)            # Eq. 5, ε = 1e-6
    layers = select_layers({l: R_l, ...}, quantile=0.75)        # R(l) above the 75th percentile
    lam, why = pareto_lambda(points, ppl_base, beta=1.0)        # Eq. 7 over the λ grid
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from routelab.errors import RoutelabError

AALS_EPS = 1e-6  # ε of Eq. 5
PARITY = 0.5  # the ideal CrowS-Pairs preference


def bias_reduction(pref_base: float, pref: float, target: float = PARITY) -> float:
    """Δbias: how much closer to parity the preference moved, |b_base − t| − |b − t| (> 0 = less bias).

    The paper's "reduction of CrowS-Pairs preference" for a model above parity; measured as a
    distance to parity so that overshooting below 0.5 is not counted as more reduction.
    """
    return abs(pref_base - target) - abs(pref - target)


def aals_ratio(delta_bias: float, delta_ppl: float, eps: float = AALS_EPS) -> float:
    """R(l) = Δbias(l) / (|ΔPPL(l)| + ε) (FARE Eq. 5)."""
    return float(delta_bias / (abs(delta_ppl) + eps))


def select_layers(ratios: Mapping[int, float], quantile: float) -> list[int]:
    """Layers whose R(l) lies strictly above the ``quantile`` of all R (numpy linear percentile).

    When no layer lies above it (every R equal), the single best layer is kept, so ARR always
    has a layer to edit (our choice; the paper is silent).
    """
    if not ratios:
        raise RoutelabError("AALS: no layer was probed; the model has no MoE layer in the profile")
    if not 0 <= quantile < 1:
        raise RoutelabError(f"aals.quantile must be in [0, 1), found {quantile}")
    layers = sorted(ratios)
    r = np.array([ratios[l] for l in layers], dtype=float)  # (L,)
    if not np.isfinite(r).all():
        raise RoutelabError(f"AALS: non-finite R(l) {dict(zip(layers, r.tolist()))}")
    cut = float(np.quantile(r, quantile))
    chosen = [l for l, v in zip(layers, r) if v > cut]
    return chosen or [layers[int(np.argmax(r))]]


@dataclass(frozen=True)
class SweepPoint:
    """One λ of the sweep: its CrowS preference and perplexity (validation split)."""

    lam: float
    pref: float
    ppl: float


def pareto_lambda(
    points: Sequence[SweepPoint], ppl_base: float, beta: float, target: float = PARITY
) -> tuple[float, str]:
    """λ* = argmin_λ |pref(λ) − target| s.t. PPL(λ) ≤ (1 + β)·PPL_base (FARE Eq. 7).

    ``points`` must include λ = 0 (the baseline, always feasible). Ties in |pref − target|
    go to the smaller λ (the gentler edit). Returns (λ*, a one-line reason).
    """
    if beta < 0 or not math.isfinite(beta):
        raise RoutelabError(f"arr.beta must be a finite number >= 0 (the allowed PPL increase), found {beta}")
    if not any(p.lam == 0 for p in points):
        raise RoutelabError("pareto_lambda: the sweep must include λ = 0 (the baseline)")
    budget = (1 + beta) * ppl_base
    feasible = [p for p in points if p.ppl <= budget]
    best = min(feasible, key=lambda p: (abs(p.pref - target), p.lam))
    dropped = sorted(p.lam for p in points if p.ppl > budget)
    why = f"|pref − {target}| = {abs(best.pref - target):.4f} at λ = {best.lam:g}; PPL budget {budget:.4f}"
    if dropped:
        why += f"; λ over budget: {', '.join(f'{x:g}' for x in dropped)}"
    return best.lam, why
