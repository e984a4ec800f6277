"""Group masking (FARE Table 2, docs/method.md §4); stage `masking`.

Switch off the top-n, the bottom-n and n random experts by φ (over all MoE layers) and measure
bias and utility on the test split against the baseline. Random-n is drawn ``draws`` times and
reported per draw and as the per-item average over draws (the paper's "Random-10 (avg)").
``mask_top`` is also compared with that average item by item (``mask_top_vs_mask_random``):
whether the experts φ ranks first matter more than any n experts, a paired test rather than
two separate ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from routelab import plots
from routelab.conditions import Condition, build
from routelab.errors import RoutelabError
from routelab.interventions import Intervention, Outcome, Run, delta_line, results_table


@dataclass
class MaskingParams:
    """The ``masking:`` section of params.yaml."""

    n: int = 4  # experts switched off per condition (FARE: 10 of OLMoE's 1,024 slots; the testbed has 64)
    draws: int = 5  # random-n draws, averaged
    seed: int = 0  # random draws

    def __post_init__(self) -> None:
        if self.n < 1 or self.draws < 1:
            raise RoutelabError(f"masking.n and masking.draws must be >= 1, found {self.n}, {self.draws}")


def conditions(run: Run) -> list[Condition]:
    """mask_top, mask_bottom and the random draws (built before any model is loaded)."""
    cfg: MaskingParams = run.cfg
    ctx = run.inputs.context(run.inputs.moe_layers, cfg.seed)
    out = [build("mask_top", ctx, n=cfg.n), build("mask_bottom", ctx, n=cfg.n)]
    return out + [build("mask_random", ctx, n=cfg.n, draw=d) for d in range(cfg.draws)]


def shape(run: Run, outcome: Outcome) -> dict[str, Any]:
    """Table 2: every condition's Δ per benchmark, the masked experts."""
    return {
        "n": run.cfg.n,
        "draws": run.cfg.draws,
        "split": run.suite.split,
        "masked": {c.name: c.settings["experts"] for c in outcome.conditions},
        "results": results_table(outcome.comparisons),
    }


STAGE = Intervention(
    name="masking",
    params=MaskingParams,
    split="test",
    conditions=conditions,
    against=lambda run, conds: [("mask_top", "mask_random")],
    shape=shape,
    summary=lambda run, r: delta_line(r, ["mask_top", "mask_bottom", "mask_random", "mask_top_vs_mask_random"]),
    plot=lambda run, r, recs, out: plots.condition_deltas(recs, out, "masking",
                                                          title=f"{run.inputs.model}: group masking (n = {run.cfg.n})"),
    plots=True,
)
