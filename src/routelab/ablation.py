"""Synthetic ablation of the sensitivity profile (FARE Table 4, docs/method.md §4); stage `ablation`.

ARR at λ (1.0 in the paper) on the AALS layers with profiles that keep or destroy φ's
information: flatten (every φ = mean φ), random φ (shuffled within each layer, ``random_draws``
draws, averaged), inverted (φ_max − φ), power φ^α, and top-k profiles (only the k most
sensitive slots of the edited layers keep their φ; k clipped to those slots). 17 conditions
with the paper's settings. On softmax routers "flatten" is exactly a no-op: softmax(z − λc)
= softmax(z) for a per-layer constant c, so its Δ must be 0 (a built-in check of the engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routelab.conditions import CONDITIONS, build
from routelab.errors import RoutelabError
from routelab.interventions import comparison_records, headline_table, run_and_compare

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


def conditions(inputs: Any, cfg: AblationParams, layers: list[int]) -> list:
    """The ablation's conditions on ``layers``, in the paper's Table 4 order (before any model loads)."""
    ctx = inputs.context(layers, cfg.seed)
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


def run(lm: Any, conds: list, inputs: Any, cfg: AblationParams, suite: Any, layers: list[int],
        out_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """The `ablation` stage's work (metrics dict: Table 4 rows and every comparison)."""
    _, comps = run_and_compare(lm, conds, suite, inputs.stats, out_dir=out_dir, label="ablation")
    return {
        "lambda": cfg.lam,
        "layers": layers,
        "split": suite.split,
        "n_conditions": len(conds),
        "results": headline_table(comps),
        "comparisons": comparison_records(comps),
    }
