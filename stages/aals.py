"""Stage `aals`: each MoE layer alone under ARR at λ_probe on the validation split; R(l) (FARE Eq. 5) selects layers.

Usage: python -m stages.aals --model diffuse --profile data/profiles/diffuse.parquet \
           --splits data/bench/diffuse/splits --baseline data/bench/diffuse/baseline \
           --out data/interventions/diffuse/aals --metrics metrics/diffuse/aals.json --plots plots/models/diffuse/aals
"""

from routelab import aals, plots
from routelab.config import section
from routelab.interventions import load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--splits", "--baseline", "--out", "--metrics", "--plots")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(aals.AalsParams, inputs.params.get("aals"), "aals")
    suite = load_suite(inputs.bench, inputs.spec, [cfg.bias, cfg.utility], "validation",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    conds = aals.conditions(inputs, cfg)  # bad input fails here, before the model loads
    result = aals.run(load_model(inputs.spec), conds, inputs, cfg, suite, args.out)
    write_stage_outputs(result, args.metrics, args.out)
    plots.aals_ratios(result, args.plots, title=args.model)
    return f"aals[{args.model}]: R(l) ranks layers {result['ranking']}; selected {result['selected']}"


if __name__ == "__main__":
    run_stage(main, "aals")
