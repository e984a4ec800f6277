"""Stage `arr_test`: baseline vs ARR at λ* on the test split, every enabled benchmark (FARE Table 6).

Usage: python -m stages.arr_test --model diffuse --profile data/profiles/diffuse.parquet \
           --sweep metrics/diffuse/arr_sweep.json --splits data/bench/diffuse/splits \
           --baseline data/bench/diffuse/baseline --out data/interventions/diffuse/arr_test \
           --metrics metrics/diffuse/arr_test.json
"""

import json
from pathlib import Path

from routelab import arr
from routelab.conditions import build
from routelab.interventions import load_suite, stage_inputs, write_stage_outputs
from routelab.models import load_model
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--model", "--profile", "--sweep", "--splits", "--baseline", "--out", "--metrics")
    inputs = stage_inputs(args.params, args.model, args.profile)
    sweep = json.loads(Path(args.sweep).read_text())
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "test",
                       splits_dir=args.splits, baseline_dir=args.baseline)  # fmt: skip
    lam_star, layers = sweep["lambda_star"], sweep["layers"]
    cond = build("arr", inputs.context(layers, inputs.stats.seed), lam=lam_star)
    result = arr.run_test(load_model(inputs.spec), cond, inputs, lam_star, layers, suite, args.out)
    write_stage_outputs(result, args.metrics, args.out)
    shown = ", ".join(f"{k} {v['before']:.3f}→{v['after']:.3f} (p_BH {v['p_bh']:.3g})" for k, v in result["results"].items())
    return f"arr_test[{args.model}]: λ* = {result['lambda_star']:g}, layers {result['layers']}: {shown}"


if __name__ == "__main__":
    run_stage(main, "arr_test")
