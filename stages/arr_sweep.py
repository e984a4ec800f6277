"""Stage `arr_sweep`: ARR at every λ of `arr.lambdas` on the AALS layers (validation split); λ* by FARE Eq. 7.

Usage: python -m stages.arr_sweep --model diffuse --profile data/profiles/diffuse.parquet \
           --aals metrics/diffuse/aals.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/arr_sweep \
           --metrics metrics/diffuse/arr_sweep.json --plots plots/models/diffuse/arr_sweep
"""

import json
from pathlib import Path

from routelab import arr, plots
from routelab.config import section
from routelab.interventions import load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--aals", "--splits", "--baseline", "--out", "--metrics", "--plots")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(arr.ArrParams, inputs.params.get("arr"), "arr")
    layers = json.loads(Path(args.aals).read_text())["selected"]
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "validation",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    conds = arr.sweep_conditions(inputs, cfg, layers)
    result = arr.run_sweep(load_model(inputs.spec), conds, inputs, cfg, suite, layers, args.out)
    write_stage_outputs(result, args.metrics, args.out)
    plots.arr_frontier(result, args.plots, title=args.model)
    return f"arr_sweep[{args.model}]: λ* = {result['lambda_star']:g} on layers {layers} ({result['reason']})"


if __name__ == "__main__":
    run_stage(main, "arr_sweep")
