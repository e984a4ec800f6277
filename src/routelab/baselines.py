"""Expert-identification baselines, all with ARR at λ* (FARE Table 8, docs/method.md §4); stage `baselines`.

FARE's FSP profile against a SAFEx-style stable selection (φ = 1 on the `safex` stage's
selected experts), random expert selection (as many random experts as SAFEx selects,
``random_draws`` draws, averaged) and prompt debiasing (an instruction prefix before every
context, no routing edit — the non-routing baseline). FSP and the selections use ARR at the
`arr_sweep` stage's λ*; FSP edits the AALS layers, a selection edits the layers it names.
The prefix is English: on the testbed, whose word-level vocabulary lacks its words, it is a run
of unknown tokens — a context change with no instruction in it, reported as found.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from routelab.conditions import build
from routelab.errors import RoutelabError
from routelab.interventions import comparison_records, headline_table, run_and_compare
from routelab.tables import load_selection

KINDS = ("fsp", "safex", "random_selection", "prompt_prefix")


@dataclass
class BaselinesParams:
    """The ``baselines:`` section of params.yaml."""

    conditions: list[str] = field(default_factory=lambda: list(KINDS))  # which baselines to run
    prompt_prefix: str = "Answer without relying on stereotypes about social groups."  # prompt debiasing
    random_draws: int = 3  # random expert selections, averaged
    seed: int = 0  # random draws

    def __post_init__(self) -> None:
        bad = [c for c in self.conditions if c not in KINDS]
        if bad:
            raise RoutelabError(f"baselines.conditions: unknown condition(s) {bad}; available: {', '.join(KINDS)}")
        if self.random_draws < 1:
            raise RoutelabError(f"baselines.random_draws must be >= 1, found {self.random_draws}")


def conditions(inputs: Any, cfg: BaselinesParams, layers: list[int], lam_star: float,
               selection: pl.DataFrame | str | Path) -> list:  # fmt: skip
    """Table 8's conditions, in the order of ``baselines.conditions`` (before any model loads)."""
    ctx = inputs.context(layers, cfg.seed)
    sel = load_selection(selection)
    n_sel = int(sel["selected"].sum()) if "selected" in sel.columns else sel.height
    out = []
    for kind in cfg.conditions:
        if kind == "fsp":  # FARE's own profile, under the baseline table's name
            out.append(replace(build("arr", ctx, lam=lam_star), name="fsp"))
        elif kind == "safex":
            out.append(build("selection", ctx, table=sel, lam=lam_star, label="safex"))
        elif kind == "random_selection":
            out += [build("random_selection", ctx, n=max(n_sel, 1), lam=lam_star, draw=d) for d in range(cfg.random_draws)]
        else:
            out.append(build("prompt_prefix", ctx, text=cfg.prompt_prefix))
    return out


def run(lm: Any, conds: list, inputs: Any, suite: Any, layers: list[int], lam_star: float,
        out_dir: str | Path) -> dict[str, Any]:  # fmt: skip
    """The `baselines` stage's work (metrics dict: Table 8 rows and every comparison)."""
    _, comps = run_and_compare(lm, conds, suite, inputs.stats, out_dir=out_dir, label="baselines")
    return {
        "lambda_star": lam_star,
        "layers": layers,
        "split": suite.split,
        "settings": {c.name: c.settings for c in conds},
        "results": headline_table(comps),
        "comparisons": comparison_records(comps),
    }
