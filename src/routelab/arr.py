"""ARR: Adaptive Routing Reweighting and its operating point λ* (FARE Eq. 6, 7; docs/method.md §3).

Stages `arr_sweep` (the λ grid on the validation split, λ* by the Pareto rule) and `arr_eval`
(baseline vs ARR at λ* on the test split, every enabled benchmark: Table 6; it reads λ* and
the layers from arr_sweep's metrics and no params section of its own). λ* = 0 (no λ of the
grid brings the preference closer to parity within the budget) is a result: arr_eval then
skips ARR and says so.

    lam, why = pareto_lambda(points, ppl_base, beta=1.0)        # Eq. 7 over the λ grid
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from routelab import plots
from routelab.aals import PARITY
from routelab.benchmarks import benchmark_by_key
from routelab.conditions import Condition, build
from routelab.errors import RoutelabError
from routelab.interventions import Intervention, Outcome, Run, find, results_table
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
    """The ``arr:`` section of params.yaml (stage arr_sweep; alternatives sweeps its grid too)."""

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
    base = next(c for c in comparisons if c.benchmark == cfg.bias and c.metric == "pct_stereotype")
    base_ppl = next(c for c in comparisons if c.benchmark == cfg.utility and c.metric == "ppl")
    points = [SweepPoint(0.0, base.before, base_ppl.before)]
    for lam in lambdas:
        name = lambda_name(lam)
        points.append(SweepPoint(float(lam), find(comparisons, name, cfg.bias, "pct_stereotype").after,
                                 find(comparisons, name, cfg.utility, "ppl").after))  # fmt: skip
    return points


def lambda_name(lam: float) -> str:
    """The condition name of ARR at λ (conditions.arr)."""
    return "arr_" + f"{lam:g}".replace(".", "p").replace("-", "m")


# --- stage arr_sweep ---------------------------------------------------------------------------


def sweep_conditions(run: Run) -> list[Condition]:
    """ARR at every λ of the grid on the AALS layers (built before any model is loaded)."""
    layers = run.extra["aals"]["selected"]
    if not layers:
        run.skip("arr", f"AALS selected no layer ({run.extra['aals'].get('reason', 'see metrics aals.json')})")
        return []
    ctx = run.inputs.context(layers, run.stats.seed)
    return [build("arr", ctx, lam=lam) for lam in run.cfg.lambdas]


def sweep_shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """λ* by Eq. 7 and the sweep's rows (the λ frontier)."""
    cfg: ArrParams = run.cfg
    layers = run.extra["aals"]["selected"]
    if not outcome.comparisons:
        return {"lambda_star": 0.0, "reason": "no layer to edit: AALS selected none", "layers": layers,
                "split": run.suite.split, "sweep": [], "settings": _settings(cfg)}  # fmt: skip
    comps = outcome.comparisons
    points = sweep_points(comps, cfg.lambdas, cfg)
    lam_star, why = pareto_lambda(points, points[0].ppl, cfg.beta)
    budget = (1 + cfg.beta) * points[0].ppl
    rows = []
    for p in points:  # λ = 0 reads the baseline side of any condition's comparisons
        name = lambda_name(cfg.lambdas[0] if p.lam == 0 else p.lam)
        values = {f"{c.benchmark}.{c.metric}": (c.before if p.lam == 0 else c.after)
                  for c in comps if c.condition == name}  # fmt: skip
        rows.append({"lambda": p.lam, "pct_stereotype": p.pref, "ppl": p.ppl, **values,
                     "feasible": p.ppl <= budget, "chosen": p.lam == lam_star})  # fmt: skip
    return {"lambda_star": lam_star, "reason": why, "layers": layers, "ppl_budget": budget, "split": run.suite.split,
            "sweep": rows, "settings": _settings(cfg), "results": results_table(comps)}  # fmt: skip


def _settings(cfg: ArrParams) -> dict[str, Any]:
    return {"lambdas": cfg.lambdas, "beta": cfg.beta, "bias": cfg.bias, "utility": cfg.utility}


def _sweep_summary(run: Run, r: dict[str, Any]) -> str:
    if r["lambda_star"] == 0:
        return f"λ* = 0 on layers {r['layers']}: ARR is the unedited model ({r['reason']})"
    return f"λ* = {r['lambda_star']:g} on layers {r['layers']} ({r['reason']})"


SWEEP = Intervention(
    name="arr_sweep",
    params=ArrParams,
    split="validation",
    inputs=("aals",),
    conditions=sweep_conditions,
    shape=sweep_shape,
    summary=_sweep_summary,
    plot=lambda run, r, recs, out: plots.arr_frontier(r, out, title=run.inputs.model),
    plots=True,
)


# --- stage arr_eval ----------------------------------------------------------------------------


@dataclass
class ArrEvalParams:
    """Stage arr_eval reads no params section of its own: λ* and the layers come from arr_sweep."""


def eval_conditions(run: Run) -> list[Condition]:
    """ARR at the sweep's λ* on its layers; none when λ* = 0 (ARR would be the unedited model)."""
    sweep = run.extra["sweep"]
    if sweep["lambda_star"] == 0 or not sweep["layers"]:
        run.skip("arr", f"λ* = 0: ARR is the unedited model ({sweep['reason']})")
        return []
    return [build("arr", run.inputs.context(sweep["layers"], run.stats.seed), lam=sweep["lambda_star"])]


def eval_shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """FARE Table 6: baseline vs ARR at λ* on the test split, every benchmark."""
    sweep = run.extra["sweep"]
    return {"lambda_star": sweep["lambda_star"], "layers": sweep["layers"],
            "condition": outcome.conditions[0].name if outcome.conditions else None, "split": run.suite.split,
            "results": results_table(outcome.comparisons)}  # fmt: skip


def _eval_summary(run: Run, r: dict[str, Any]) -> str:
    if not r["condition"]:
        return f"λ* = 0: nothing to evaluate on layers {r['layers']}"
    res = r["results"][r["condition"]]
    shown = ", ".join(f"{key}.{m} {v['before']:.3f}→{v['after']:.3f} (p_BH {v['p_bh']:.3g})"
                      for key, ms in res.items() for m, v in ms.items() if m == benchmark_by_key(key).summary)  # fmt: skip
    return f"λ* = {r['lambda_star']:g}, layers {r['layers']}: {shown}"


EVAL = Intervention(
    name="arr_eval",
    params=ArrEvalParams,
    split="test",
    inputs=("sweep",),
    conditions=eval_conditions,
    shape=eval_shape,
    summary=_eval_summary,
)
