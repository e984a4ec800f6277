"""Stage `baselines`: FSP vs SAFEx-style selection, random selection and prompt debiasing, with ARR at λ* (FARE Table 8).

Usage: python -m stages.baselines --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --safex data/selections/diffuse_safex.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --out data/interventions/diffuse/baselines --metrics metrics/diffuse/baselines.json \
           --plots plots/models/diffuse/baselines
"""

import json
from pathlib import Path

from routelab import baselines, plots
from routelab.config import section
from routelab.interventions import delta_line, load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--sweep", "--safex", "--splits", "--baseline", "--out",
                      "--metrics", "--plots")  # fmt: skip
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(baselines.BaselinesParams, inputs.params.get("baselines"), "baselines")
    sweep = json.loads(Path(args.sweep).read_text())
    lam_star, layers = sweep["lambda_star"], sweep["layers"]
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "test",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    conds = baselines.conditions(inputs, cfg, layers, lam_star, args.safex)
    result = baselines.run(load_model(inputs.spec), conds, inputs, suite, layers, lam_star, args.out)
    records = write_stage_outputs(result, args.metrics, args.out)
    plots.condition_deltas(records, args.plots, "baselines", title=f"{args.model}: baselines at λ* = {lam_star:g}")
    return f"baselines[{args.model}] at λ* = {lam_star:g}: " + delta_line(
        result, ["fsp", "safex", "random_selection", "prompt_prefix"])


if __name__ == "__main__":
    run_stage(main, "baselines")
