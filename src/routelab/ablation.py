"""Synthetic ablation of the sensitivity profile (FARE Table 4, docs/method.md §4); stage `ablation`.

ARR at λ (1.0 in the paper) on the AALS layers with profiles that keep or destroy φ's
information: flatten (every φ = mean φ), random φ (shuffled within each layer, ``random_draws``
draws, averaged), inverted (φ_max − φ), power φ^α, and top-k profiles (only the k most
sensitive slots of the edited layers keep their φ; k clipped to those slots). 17 conditions
with the paper's settings. On softmax routers "flatten" is exactly a no-op: softmax(z − λc)
= softmax(z) for a per-layer constant c, so its Δ must be 0 (a built-in check of the engine).

Every ablated profile is rescaled to φ's maximum (φ^α · max φ / max φ^α, inverted and flatten
are at most max φ already), so the conditions compare the profile's SHAPE at one penalty
strength: unscaled, φ^4 would reach 10× the penalty of φ^0.25 and mix strength into shape.
φ^1 (FSP's own profile) is also compared with random φ item by item (``power_1_vs_random_phi``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from routelab import plots
from routelab.conditions import CONDITIONS, Condition, build
from routelab.errors import RoutelabError
from routelab.interventions import Intervention, Outcome, Run, delta_line, results_table

KINDS = ("flatten", "random_phi", "inverted", "power", "top_k_profile")


@dataclass
class AblationParams:
    """The ``ablation:`` section of params.yaml."""

    conditions: list[str] = field(default_factory=lambda: list(KINDS))  # which profile families to run
    lam: float = 1.0  # λ of every ablation condition (FARE: 1.0)
    powers: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])  # α of φ^α
    top_k: list[int] = field(default_factory=lambda: [5, 10, 25, 50, 100])  # k of the top-k profiles
    random_draws: int = 5  # random-φ draws, averaged
    seed: int = 0  # random draws

    def __post_init__(self) -> None:
        for name in self.conditions:
            if name not in KINDS:
                hint = f" ({name} is a condition of another stage)" if name in CONDITIONS else ""
                raise RoutelabError(f"ablation.conditions: unknown condition '{name}'{hint}; available: {', '.join(KINDS)}")
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise RoutelabError(f"ablation.lam must be a finite number > 0, found {self.lam}")
        if any(not (math.isfinite(a) and a > 0) for a in self.powers):
            raise RoutelabError(f"ablation.powers must be finite numbers > 0, found {self.powers}")
        if any(k < 1 for k in self.top_k) or self.random_draws < 1:
            raise RoutelabError("ablation.top_k values and ablation.random_draws must be >= 1")


def conditions(run: Run) -> list[Condition]:
    """The ablation's conditions on the AALS layers, in the paper's Table 4 order (before any
    model loads); none when AALS selected no layer (skipped, with the reason)."""
    cfg: AblationParams = run.cfg
    layers = run.extra["aals"]["selected"]
    if not layers:
        run.skip("ablation", f"AALS selected no layer ({run.extra['aals'].get('reason', 'see metrics aals.json')})")
        return []
    ctx = run.inputs.context(layers, cfg.seed)
    out = []
    for kind in cfg.conditions:
        if kind == "random_phi":
            out += [build("random_phi", ctx, draw=d, lam=cfg.lam) for d in range(cfg.random_draws)]
        elif kind == "power":
            out += [build("power", ctx, alpha=a, lam=cfg.lam) for a in cfg.powers]
        elif kind == "top_k_profile":
            out += [build("top_k_profile", ctx, k=k, lam=cfg.lam) for k in cfg.top_k]
        else:
            out.append(build(kind, ctx, lam=cfg.lam))
    return out


def against(run: Run, conds: list[Condition]) -> list[tuple[str, str]]:
    """φ^1 (FSP's own profile) against random φ, item by item: does φ's information matter?"""
    names = {c.name for c in conds} | {c.group for c in conds if c.group}
    return [("power_1", "random_phi")] if {"power_1", "random_phi"} <= names else []


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Table 4: every ablated profile's Δ per benchmark."""
    return {
        "lambda": run.cfg.lam,
        "layers": run.extra["aals"]["selected"],
        "split": run.suite.split,
        "n_conditions": len(outcome.conditions),
        "results": results_table(outcome.comparisons),
    }


STAGE = Intervention(
    name="ablation",
    params=AblationParams,
    split="test",
    inputs=("aals",),
    conditions=conditions,
    against=against,
    shape=shape,
    summary=lambda run, r: f"{r['n_conditions']} conditions on layers {r['layers']}; " + delta_line(
        r, ["flatten", "random_phi", "inverted", "power_1", "power_1_vs_random_phi"]),
    plot=lambda run, r, recs, out: plots.condition_deltas(recs, out, "ablation",
                                                          title=f"{run.inputs.model}: synthetic ablation (λ = {run.cfg.lam:g})"),
    plots=True,
)
