"""Stage `bench_baseline`: every enabled benchmark on the unintervened model, both splits.

Usage: python -m stages.bench_baseline --model diffuse --out data/bench/diffuse/baseline \
           --splits data/bench/diffuse/splits --metrics metrics/diffuse/bench_baseline.json
Writes the validation/test split of each benchmark (read back by every later stage), per-item
Parquet <out>/<benchmark>_<split>.parquet, and the metrics with bootstrap 95 % CIs.
"""


from routelab.config import load_params, section
from routelab.bench_baseline import BenchBaselineParams, evaluate, headline, load_benchmarks
from routelab.models import load_model, model_spec
from routelab.stage import run_stage, stage_args, write_metrics


def main() -> str:
    args = stage_args(__doc__, "--model", "--out", "--splits", "--metrics", outputs=("--metrics",),
                      output_dirs=("--out", "--splits"))
    params = load_params(args.params)
    cfg = section(BenchBaselineParams, params.get("bench_baseline"), "bench_baseline")
    spec = model_spec(params, args.model)
    items = load_benchmarks(cfg, spec)  # every input read first: a missing one fails before the model loads
    lm = load_model(spec)
    results = evaluate(lm, cfg, items, args.out, args.splits, write_splits=True)
    write_metrics(args.metrics, results)
    return f"bench_baseline[{args.model}]: {len(results)} benchmarks; test split: {headline(results)}"


if __name__ == "__main__":
    run_stage(main, "bench_baseline")
