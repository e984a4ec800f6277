"""Group masking (FARE Table 2, docs/method.md §4); stage `masking`.

Switch off the top-n, the bottom-n and n random experts by φ (over all MoE layers) and measure
bias and utility on the test split against the baseline. Random-n is drawn ``draws`` times and
reported per draw and as the per-item average over draws (the paper's "Random-10 (avg)").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routelab.conditions import build
from routelab.errors import RoutelabError
from routelab.interventions import comparison_records, headline_table, run_and_compare


@dataclass
class MaskingParams:
    """The ``masking:`` section of params.yaml."""

    n: int = 4  # experts switched off per condition (FARE: 10 of OLMoE's 1,024 slots; the testbed has 64)
    draws: int = 5  # random-n draws, averaged
    seed: int = 0  # random draws

    def __post_init__(self) -> None:
        if self.n < 1 or self.draws < 1:
            raise RoutelabError(f"masking.n and masking.draws must be >= 1, found {self.n}, {self.draws}")


def conditions(inputs: Any, cfg: MaskingParams) -> list:
    """mask_top, mask_bottom and the random draws (built before any model is loaded)."""
    ctx = inputs.context(inputs.moe_layers, cfg.seed)
    out = [build("mask_top", ctx, n=cfg.n), build("mask_bottom", ctx, n=cfg.n)]
    return out + [build("mask_random", ctx, n=cfg.n, draw=d) for d in range(cfg.draws)]


def run(lm: Any, conds: list, inputs: Any, cfg: MaskingParams, suite: Any, out_dir: str | Path) -> dict[str, Any]:
    """The `masking` stage's work (metrics dict: Table 2 rows and every comparison)."""
    _, comps = run_and_compare(lm, conds, suite, inputs.stats, out_dir=out_dir, label="masking")
    return {
        "n": cfg.n,
        "draws": cfg.draws,
        "split": suite.split,
        "masked": {c.name: c.settings["experts"] for c in conds},
        "results": headline_table(comps),
        "comparisons": comparison_records(comps),
    }
