"""Group masking (FARE Table 2, docs/method.md §4); stage `masking`.

Switch off the top-n, the bottom-n and n random experts by φ and measure bias and utility on the
test split against the baseline. ``masking.layers`` says where the n are chosen: ``all`` MoE
layers (FARE Table 2), or only the layers AALS selected (``aals``; the testbeds: φ is min-max
normalised per layer, so the top n over all layers are about each layer's top n/L, which covers
part of a plant and can take a general-purpose expert of layer 0 — docs/interventions.md). Random-n is drawn ``draws`` times and
reported per draw and as the per-item average over draws (the paper's "Random-10 (avg)").
``mask_top`` is also compared with that average item by item (``mask_top_vs_mask_random``):
whether the experts φ ranks first matter more than any n experts, a paired test rather than
two separate ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from routelab import plots
from routelab.conditions import Condition, ConditionContext, build
from routelab.config import check_choice
from routelab.errors import RoutelabError
from routelab.interventions import Intervention, Outcome, Run, delta_line, results_table


@dataclass
class MaskingParams:
    """The ``masking:`` section of params.yaml."""

    n: int = 4  # experts switched off per condition (FARE: 10 of OLMoE's 1,024 slots; the testbed has 64)
    draws: int = 5  # random-n draws, averaged
    seed: int = 0  # random draws
    layers: str = "all"  # where the n are chosen: all (every MoE layer, FARE Table 2) | aals (the AALS layers)

    def __post_init__(self) -> None:
        if self.n < 1 or self.draws < 1:
            raise RoutelabError(f"masking.n and masking.draws must be >= 1, found {self.n}, {self.draws}")
        check_choice("masking.layers", self.layers, SCOPES)


SCOPES = ("all", "aals")  # where masking chooses its n experts


def scoped_context(inputs: Any, scope: str, aals_layers: list[int], seed: int) -> ConditionContext | None:
    """The condition context whose φ rows are the masking candidates: every MoE layer (``all``) or
    only ``aals_layers`` (``aals``; None when AALS selected none, so there is nothing to mask)."""
    if scope == "all":
        return inputs.context(inputs.moe_layers, seed)
    if not aals_layers:
        return None
    ctx = inputs.context(sorted(aals_layers), seed)
    return replace(ctx, profile=ctx.profile.filter(pl.col("layer").is_in(sorted(aals_layers))))


def conditions(run: Run) -> list[Condition]:
    """mask_top, mask_bottom and the random draws (built before any model is loaded)."""
    cfg: MaskingParams = run.cfg
    aals_layers = run.extra["aals"]["selected"] if cfg.layers == "aals" else []  # `all` needs no AALS result
    ctx = scoped_context(run.inputs, cfg.layers, aals_layers, cfg.seed)
    if ctx is None:  # a result, recorded: the stage's metrics, summary line and report say why
        for name in ("mask_top", "mask_bottom", "mask_random"):
            run.skip(name, "masking.layers = aals and AALS selected no layer")
        return []
    out = [build("mask_top", ctx, n=cfg.n), build("mask_bottom", ctx, n=cfg.n)]
    return out + [build("mask_random", ctx, n=cfg.n, draw=d) for d in range(cfg.draws)]


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Table 2: every condition's Δ per benchmark, the masked experts."""
    return {
        "n": run.cfg.n,
        "draws": run.cfg.draws,
        "layers": run.cfg.layers,
        "split": run.suite.split,
        "masked": {c.name: c.settings["experts"] for c in outcome.conditions},
        "results": results_table(outcome.comparisons),
    }


STAGE = Intervention(
    name="masking",
    params=MaskingParams,
    split="test",
    conditions=conditions,
    inputs=("aals",),
    against=lambda run, conds: [("mask_top", "mask_random")] if conds else [],
    shape=shape,
    summary=lambda run, r: delta_line(r, ["mask_top", "mask_bottom", "mask_random", "mask_top_vs_mask_random"]),
    plot=lambda run, r, recs, out: plots.condition_deltas(recs, out, "masking",
                                                          title=f"{run.inputs.model}: group masking (n = {run.cfg.n})"),
    plots=True,
)
