"""Stage `generation`: do routing edits change what the model writes? (FARE Table 7, docs/method.md §5)

Usage: python -m stages.generation --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --steering data/interventions/diffuse/steer/steering.parquet \
           --out data/generation/diffuse --metrics metrics/diffuse/generation.json
Writes <out>/generations.parquet (every continuation with its prompt, condition, seed and scores),
<out>/<condition>/<protocol>_all.parquet (per-prompt rows) and the Table 7 comparisons.
"""

import json
from pathlib import Path

from routelab import generation
from routelab.classifiers import usable_classifiers
from routelab.config import section
from routelab.interventions import Run, stage_inputs
from routelab.io import write_json, write_parquet
from routelab.models import load_model
from routelab.stage import format_p, run_stage, stage_args
import polars as pl  # after routelab: the compute path is pinned first


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--sweep", "--steering", "--out", "--metrics",
                      outputs=("--metrics",), output_dirs=("--out",))  # fmt: skip
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(generation.GenerationParams, inputs.params.get("generation"), "generation")
    run = Run(inputs, cfg, {}, Path(args.out))
    protocols = generation.protocol_items(inputs.spec, cfg, inputs.bench.paths)
    conds = generation.conditions(run, cfg, json.loads(Path(args.sweep).read_text()), pl.read_parquet(args.steering))
    classifiers = usable_classifiers(cfg.classifiers, detoxify_checkpoint=cfg.detoxify_checkpoint)
    run.lm = load_model(inputs.spec)
    result, recs, table = generation.run_transfer(run, protocols, conds, classifiers)
    write_parquet(table, run.out / "generations.parquet")
    write_json(run.out / "comparisons.json", recs)
    write_json(args.metrics, result)
    sig = [f"{r['condition']}/{r['benchmark']}.{r['metric']} {r['delta']:+.3f} (p_BH {format_p(r['p_bh'])})"
           for r in recs if r["p_bh"] < inputs.stats.alpha]  # fmt: skip
    skipped = "; skipped: " + "; ".join(f"{k} ({v})" for k, v in run.skipped.items()) if run.skipped else ""
    return (f"generation[{args.model}]: {len(table)} continuations, {len(recs)} comparisons; significant after BH: "
            f"{', '.join(sig) or 'none'}{skipped}")  # fmt: skip


if __name__ == "__main__":
    run_stage(main, "generation")
