"""ARR: Adaptive Routing Reweighting and its operating point λ* (FARE Eq. 6, 7; docs/method.md §3).

Stages `arr_sweep` (the λ grid on the validation split, λ* by the Pareto rule) and `arr_test`
(baseline vs ARR at λ* on the test split, every enabled benchmark: Table 6):

    lam, why = pareto_lambda(points, ppl_base, beta=1.0)        # Eq. 7 over the λ grid
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from routelab.aals import PARITY
from routelab.conditions import build
from routelab.errors import RoutelabError
from routelab.interventions import comparison_records, headline_table, run_and_compare
from routelab.statistics import Comparison


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


@dataclass
class ArrParams:
    """The ``arr:`` section of params.yaml (stages arr_sweep and arr_test)."""

    lambdas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])  # the λ grid (λ = 0 is the baseline)
    beta: float = 1.0  # allowed perplexity increase: PPL(λ) ≤ (1 + β)·PPL_base (FARE: β ≤ 100 %)
    bias: str = "crows_pairs"  # the benchmark whose preference λ* brings to parity
    utility: str = "perplexity"  # the benchmark whose perplexity the constraint bounds

    def __post_init__(self) -> None:
        if not self.lambdas:
            raise RoutelabError("arr.lambdas is empty: give at least one λ > 0 to sweep, e.g. [0.5, 1, 2, 4]")
        bad = [x for x in self.lambdas if not (math.isfinite(x) and x > 0)]
        if bad:
            raise RoutelabError(
                f"arr.lambdas holds {bad}: every λ must be a finite number > 0 (λ = 0, the baseline, is always "
                "included; a negative λ would raise the sensitive experts instead of lowering them)"
            )
        if len(set(self.lambdas)) != len(self.lambdas):
            raise RoutelabError(f"arr.lambdas repeats a value: {self.lambdas}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise RoutelabError(f"arr.beta must be a finite number >= 0 (the allowed PPL increase), found {self.beta}")


def sweep_points(comparisons: Sequence[Comparison], lambdas: Sequence[float], cfg: ArrParams) -> list[SweepPoint]:
    """λ = 0 (the baseline) and every swept λ as (λ, preference, PPL), from the comparisons."""
    by = {(c.condition, c.benchmark, c.metric): c for c in comparisons}
    base = next(c for c in comparisons if c.benchmark == cfg.bias and c.metric == "pct_stereotype")
    base_ppl = next(c for c in comparisons if c.benchmark == cfg.utility and c.metric == "ppl")
    points = [SweepPoint(0.0, base.before, base_ppl.before)]
    for lam in lambdas:
        name = lambda_name(lam)
        points.append(SweepPoint(float(lam), by[(name, cfg.bias, "pct_stereotype")].after,
                                 by[(name, cfg.utility, "ppl")].after))  # fmt: skip
    return points


def lambda_name(lam: float) -> str:
    """The condition name of ARR at λ (conditions.arr)."""
    return "arr_" + f"{lam:g}".replace(".", "p").replace("-", "m")


def sweep_conditions(inputs: Any, cfg: ArrParams, layers: list[int]) -> list:
    """ARR at every λ of the grid on ``layers`` (built before any model is loaded)."""
    ctx = inputs.context(layers, inputs.stats.seed)
    return [build("arr", ctx, lam=lam) for lam in cfg.lambdas]


def run_sweep(lm: Any, conds: list, inputs: Any, cfg: ArrParams, suite: Any, layers: list[int],
              out_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """The `arr_sweep` stage's work: score the grid; λ* by Eq. 7 (metrics dict)."""
    _, comps = run_and_compare(lm, conds, suite, inputs.stats, out_dir=out_dir, label="arr_sweep")
    points = sweep_points(comps, cfg.lambdas, cfg)
    lam_star, why = pareto_lambda(points, points[0].ppl, cfg.beta)
    by_cond: dict[str, dict[str, Comparison]] = {}
    for c in comps:
        by_cond.setdefault(c.condition, {})[f"{c.benchmark}.{c.metric}"] = c
    budget = (1 + cfg.beta) * points[0].ppl
    rows = []
    for p in points:  # λ = 0 reads the baseline side of any condition's comparisons
        cond = by_cond[lambda_name(cfg.lambdas[0] if p.lam == 0 else p.lam)]
        values = {key: (c.before if p.lam == 0 else c.after) for key, c in cond.items()}
        rows.append({"lambda": p.lam, "pct_stereotype": p.pref, "ppl": p.ppl, **values,
                     "feasible": p.ppl <= budget, "chosen": p.lam == lam_star})  # fmt: skip
    return {
        "lambda_star": lam_star,
        "reason": why,
        "layers": layers,
        "ppl_budget": budget,
        "split": suite.split,
        "sweep": rows,
        "settings": {"lambdas": cfg.lambdas, "beta": cfg.beta, "bias": cfg.bias, "utility": cfg.utility},
        "comparisons": comparison_records(comps),
    }


def run_test(lm: Any, cond: Any, inputs: Any, lam_star: float, layers: list[int], suite: Any,
             out_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """The `arr_test` stage's work: baseline vs ARR at λ* (``cond``) on the test split (FARE Table 6)."""
    _, comps = run_and_compare(lm, [cond], suite, inputs.stats, out_dir=out_dir, label="arr_test")
    return {
        "lambda_star": lam_star,
        "layers": layers,
        "condition": cond.name,
        "split": suite.split,
        "results": headline_table(comps)[cond.name],
        "comparisons": comparison_records(comps),
    }
