"""Stage `masking`: top-n, bottom-n and random-n experts by φ switched off, test split (FARE Table 2).

Usage: python -m stages.masking --model diffuse --profile data/profiles/diffuse.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --out data/interventions/diffuse/masking --metrics metrics/diffuse/masking.json \
           --plots plots/models/diffuse/masking
"""

from routelab import masking, plots
from routelab.config import section
from routelab.interventions import delta_line, load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--splits", "--baseline", "--out", "--metrics", "--plots")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(masking.MaskingParams, inputs.params.get("masking"), "masking")
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "test",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    conds = masking.conditions(inputs, cfg)  # a masking.n too large fails here, before the model loads
    result = masking.run(load_model(inputs.spec), conds, inputs, cfg, suite, args.out)
    records = write_stage_outputs(result, args.metrics, args.out)
    plots.condition_deltas(records, args.plots, "masking", title=f"{args.model}: group masking (n = {cfg.n})")
    return f"masking[{args.model}]: " + delta_line(result, ["mask_top", "mask_bottom", "mask_random"])


if __name__ == "__main__":
    run_stage(main, "masking")
