"""Stage `steer`: SteerMoE detection on paired inputs, then the steering evaluated as a condition (test split).

Usage: python -m stages.steer --model diffuse --prompts data/prompts/diffuse.parquet \
           --profile data/profiles/diffuse.parquet --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/steer \
           --metrics metrics/diffuse/steer.json
Writes <out>/pairs_routing.parquet (the pairs' routing log), <out>/delta.parquet (Δ per expert),
<out>/steering.parquet (A+/A− with its provenance) and the condition's per-item tables.
"""

from routelab import steer
from routelab.config import section
from routelab.interventions import delta_line, load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--prompts", "--profile", "--splits", "--baseline", "--out", "--metrics")
    inputs = stage_inputs(args.params, args.model, args.profile)
    cfg = section(steer.SteerParams, inputs.params.get("steer"), "steer")
    pairs = steer.stage_pairs(cfg, args.prompts)
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "test",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    result = steer.run(load_model(inputs.spec), inputs, cfg, pairs, suite, args.out)
    write_stage_outputs(result, args.metrics, args.out)
    return (f"steer[{args.model}]: {cfg.behaviour}, {result['n_pairs']} pairs; deactivated "
            f"{result['selected']['deactivate']}, activated {result['selected']['activate']}; "
            + delta_line(result, ["steer"]))  # fmt: skip


if __name__ == "__main__":
    run_stage(main, "steer")
