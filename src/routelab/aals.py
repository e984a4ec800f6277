"""AALS: Architecture-Aware Layer Selection (FARE Eq. 5, docs/method.md §3); stage `aals`.

Each MoE layer is probed alone with ARR at λ_probe on the VALIDATION split; its
fairness-efficiency ratio R(l) = Δbias(l) / (|ΔPPL(l)| + ε) ranks it, and the layers above the
q-th percentile of R are the ones ARR edits afterwards:

    delta_bias = bias_reduction(pref_base, pref_layer)          # toward parity 0.5
    R = aals_ratio(delta_bias, ppl_layer - ppl_base)            # Eq. 5, ε = 1e-6
    layers = select_layers({l: R_l, ...}, quantile=0.75)        # R(l) above the 75th percentile
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from routelab import plots
from routelab.benchmarks import get_benchmark
from routelab.conditions import Condition, build
from routelab.config import check_choice
from routelab.errors import RoutelabError
from routelab.interventions import Intervention, Outcome, Run, find
from routelab.statistics import Comparison

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

    Only layers with R(l) > 0 qualify: a probe that does not move the preference toward parity
    (R ≤ 0) is no reason to edit a layer, so when none does the selection is empty (a result:
    later stages skip ARR and say why). When layers with R > 0 exist but none lies above the
    quantile (every R equal), the single best is kept (our choice; the paper is silent).
    """
    if not ratios:
        raise RoutelabError("AALS: no layer was probed; the model has no MoE layer in the profile")
    if not 0 <= quantile < 1:
        raise RoutelabError(f"aals.quantile must be in [0, 1), found {quantile}")
    layers = sorted(ratios)
    r = np.array([ratios[l] for l in layers], dtype=float)  # (L,)
    if not np.isfinite(r).all():
        raise RoutelabError(f"AALS: non-finite R(l) {dict(zip(layers, r.tolist()))}")
    if not (r > 0).any():
        return []
    cut = float(np.quantile(r, quantile))
    chosen = [l for l, v in zip(layers, r) if v > cut and v > 0]
    return chosen or [layers[int(np.argmax(r))]]




@dataclass
class AalsParams:
    """The ``aals:`` section of params.yaml."""

    lambda_probe: float = 1.0  # λ of every one-layer probe (FARE: 1.0)
    quantile: float = 0.75  # layers with R(l) above this quantile of all R are selected (FARE: 0.75)
    guard: str = "none"  # none: the paper's R(l) | significant: R(l) = 0 where Δbias is not significant
    bias: str = "crows_pairs"  # benchmark whose preference is the bias (metric pct_stereotype)
    utility: str = "perplexity"  # benchmark whose perplexity is the cost (metric ppl)

    def __post_init__(self) -> None:
        check_choice("aals.guard", self.guard, GUARDS)
        if not (math.isfinite(self.lambda_probe) and self.lambda_probe > 0):
            raise RoutelabError(f"aals.lambda_probe must be a finite number > 0, found {self.lambda_probe}")
        if not 0 <= self.quantile < 1:
            raise RoutelabError(f"aals.quantile must be in [0, 1), found {self.quantile}")
        if "pct_stereotype" not in get_benchmark(self.bias).metrics:
            raise RoutelabError(f"aals.bias = {self.bias}: needs a benchmark with a pct_stereotype metric (crows_pairs)")
        if "ppl" not in get_benchmark(self.utility).metrics:
            raise RoutelabError(f"aals.utility = {self.utility}: needs a benchmark with a ppl metric (perplexity)")


GUARDS = ("none", "significant")


def layer_table(
    comparisons: Sequence[Comparison], layers: Sequence[int], cfg: AalsParams, alpha: float
) -> dict[int, dict[str, Any]]:
    """Per probed layer: preference and perplexity under the probe, Δbias, ΔPPL, R(l), p, p_BH.

    ``comparisons``: the probes' comparisons with the baseline (conditions ``layer_<l>``;
    metrics ``<bias>.pct_stereotype`` and ``<utility>.ppl``). With ``guard: significant`` a
    layer whose preference change is not significant after BH (p_bh ≥ alpha) gets R = 0: the
    paper's R(l) divides by |ΔPPL| + 1e-6 and explodes on a layer whose edit changes nothing
    measurable but flips a pair or two (tests/test_aals.py shows it).
    """
    by = {(c.condition, c.benchmark, c.metric): c for c in comparisons}
    out = {}
    for layer in layers:
        bias = by[(f"layer_{layer}", cfg.bias, "pct_stereotype")]
        ppl = by[(f"layer_{layer}", cfg.utility, "ppl")]
        d_bias = bias_reduction(bias.before, bias.after)
        r = aals_ratio(d_bias, ppl.after - ppl.before)
        significant = bias.p_bh is not None and bias.p_bh < alpha
        out[layer] = {
            "pct_stereotype": bias.after, "ppl": ppl.after, "delta_bias": d_bias,
            "delta_ppl": ppl.after - ppl.before, "R": r if cfg.guard == "none" or significant else 0.0,
            "R_paper": r, "R_guarded": r if significant else 0.0, "p": bias.p, "p_bh": bias.p_bh,
        }  # fmt: skip
    return out


def conditions(run: Run) -> list[Condition]:
    """One ARR probe per MoE layer at λ_probe (built before any model is loaded)."""
    ctx = run.inputs.context(run.inputs.moe_layers, run.stats.seed)
    return [build("arr_layer", ctx, lam=run.cfg.lambda_probe, layer=layer) for layer in run.inputs.moe_layers]


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Every layer's probe, R(l) in three forms and the selection (FARE Eq. 5)."""
    cfg: AalsParams = run.cfg
    layers, comps = run.inputs.moe_layers, outcome.comparisons
    table = layer_table(comps, layers, cfg, run.stats.alpha)
    selected = select_layers({layer: t["R"] for layer, t in table.items()}, cfg.quantile)
    reason = (f"R(l) above the {cfg.quantile:g} quantile" if selected
              else f"no layer's probe moves the preference toward parity (every R(l) <= 0, aals.guard = {cfg.guard})")  # fmt: skip

    def rank(key: str) -> list[int]:
        return sorted(layers, key=lambda layer: (-table[layer][key], -table[layer]["delta_bias"]))

    return {
        "selected": selected,
        "reason": reason,
        "ranking": rank("R"),  # by the configured R (aals.guard)
        "ranking_paper": rank("R_paper"),  # by Eq. 5 as printed
        "ranking_guarded": rank("R_guarded"),  # R = 0 where Δbias is not significant after BH
        "split": run.suite.split,
        "base": {"pct_stereotype": find(comps, f"layer_{layers[0]}", cfg.bias, "pct_stereotype").before,
                 "ppl": find(comps, f"layer_{layers[0]}", cfg.utility, "ppl").before},
        "layers": {str(layer): t for layer, t in table.items()},
        "settings": {"lambda_probe": cfg.lambda_probe, "quantile": cfg.quantile, "guard": cfg.guard,
                     "bias": cfg.bias, "utility": cfg.utility},
    }  # fmt: skip


STAGE = Intervention(
    name="aals",
    params=AalsParams,
    split="validation",
    conditions=conditions,
    benchmarks=lambda run: [run.cfg.bias, run.cfg.utility],
    metrics=lambda run: {run.cfg.bias: ["pct_stereotype"], run.cfg.utility: ["ppl"]},
    shape=shape,
    summary=lambda run, r: f"R(l) ranks layers {r['ranking']}; selected {r['selected'] or 'none'} ({r['reason']})",
    plot=lambda run, r, recs, out: plots.aals_ratios(r, out, title=run.inputs.model),
    plots=True,
)
