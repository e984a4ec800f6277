"""Stage `ablation`: ARR at λ = `ablation.lam` with ablated profiles on the AALS layers, test split (FARE Table 4).

Usage: python -m stages.ablation --model diffuse --profile data/profiles/diffuse.parquet \
           --aals metrics/diffuse/aals.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/ablation \
           --metrics metrics/diffuse/ablation.json --plots plots/models/diffuse/ablation
"""

import json
from pathlib import Path

from routelab import ablation, plots
from routelab.config import section
from routelab.interventions import delta_line, load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--aals", "--splits", "--baseline", "--out", "--metrics", "--plots")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(ablation.AblationParams, inputs.params.get("ablation"), "ablation")
    layers = json.loads(Path(args.aals).read_text())["selected"]
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "test",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    conds = ablation.conditions(inputs, cfg, layers)
    result = ablation.run(load_model(inputs.spec), conds, inputs, cfg, suite, layers, args.out)
    records = write_stage_outputs(result, args.metrics, args.out)
    plots.condition_deltas(records, args.plots, "ablation", title=f"{args.model}: synthetic ablation (λ = {cfg.lam:g})")
    return f"ablation[{args.model}]: {result['n_conditions']} conditions on layers {layers}; " + delta_line(
        result, ["flatten", "random_phi", "inverted", "power_1"])


if __name__ == "__main__":
    run_stage(main, "ablation")
