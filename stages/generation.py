"""Stage `generation`: do routing edits change what the model writes? (FARE Table 7, docs/method.md §5)

Usage: python -m stages.generation --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --steering data/interventions/diffuse/steer/steering.parquet \
           --out data/generation/diffuse --metrics metrics/diffuse/generation.json
Writes <out>/generations.parquet (every continuation with its prompt, condition, seed and scores),
<out>/<condition>/<protocol>_all.parquet (per-prompt rows) and the Table 7 comparisons.
"""

import json
from dataclasses import replace
from pathlib import Path

import polars as pl

from routelab import generation
from routelab.baselines import BaselinesParams
from routelab.conditions import build
from routelab.config import section
from routelab.interventions import (
    comparison_records,
    headline_table,
    stage_inputs,
    write_condition_tables,
    write_stage_outputs,
)
from routelab.io import write_parquet
from routelab.models import load_model
from routelab.scorers import usable_scorers
from routelab.stage import run_stage, stage_args


def conditions(inputs, cfg, sweep_path, steering_path) -> list:
    """The baseline, then each condition of generation.conditions, named as in params."""
    sweep = json.loads(Path(sweep_path).read_text())
    ctx = inputs.context(sweep["layers"], inputs.stats.seed)
    prefix = section(BaselinesParams, inputs.params.get("baselines"), "baselines").prompt_prefix
    make = {
        "arr": lambda: build("arr", ctx, lam=sweep["lambda_star"]),
        "mask_top": lambda: build("mask_top", ctx, n=cfg.mask_n),
        "mask_bottom": lambda: build("mask_bottom", ctx, n=cfg.mask_n),
        "steer": lambda: build("steer", ctx, table=pl.read_parquet(steering_path)),
        "prompt_prefix": lambda: build("prompt_prefix", ctx, text=prefix),
    }
    return [build("baseline", ctx)] + [replace(make[name](), name=name) for name in cfg.conditions]


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--sweep", "--steering", "--out", "--metrics")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(generation.GenerationParams, inputs.params.get("generation"), "generation")
    protocols = generation.protocol_items(inputs.spec, cfg, inputs.bench.paths)
    conds = conditions(inputs, cfg, args.sweep, args.steering)
    scorers = usable_scorers(cfg.scorers, detoxify_checkpoint=cfg.detoxify_checkpoint)
    lm = load_model(inputs.spec)
    table, rows = generation.run_protocols(lm, protocols, conds, cfg, scorers)
    write_parquet(table, Path(args.out) / "generations.parquet")
    write_condition_tables(args.out, rows, "all")
    comps = generation.transfer_table(protocols, rows, inputs.stats)
    result = {
        "protocols": {name: len(items) for name, (_, items) in protocols.items()},
        "conditions": {c.name: c.settings for c in conds},
        "scorers": sorted(scorers),
        "decode": cfg.decode().__dict__,
        "results": headline_table(comps),
        "comparisons": comparison_records(comps),
    }
    write_stage_outputs(result, args.metrics, args.out)
    sig = [f"{c.condition}/{c.benchmark}.{c.metric} {c.delta:+.3f}" for c in comps if c.p_bh is not None and c.p_bh < inputs.stats.alpha]
    return (f"generation[{args.model}]: {len(table)} continuations, {len(comps)} comparisons; "
            f"significant after BH: {', '.join(sig) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    run_stage(main, "generation")
