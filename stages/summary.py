"""Stage `summary`: one model's headline numbers and, for a testbed, its ground-truth verdicts (docs/method.md §10).

Usage: python -m stages.summary --model routed --model-dir data/models/routed --metrics-dir metrics/routed \
           --interventions data/interventions/routed --generation data/generation/routed \
           --profile data/profiles/routed.parquet --ground-truth metrics/ground_truth/routed.json \
           --out metrics/summary/routed.json
--out holds the few numbers `dvc metrics show` lists (routelab.report.SUMMARY_KEYS). A testbed
variant (control, diffuse, routed, routed_null, nonrouted) also gets its role's checks
(routelab.testbed.verdicts) in --ground-truth; any other model an empty verdict list.
"""

from pathlib import Path

from routelab.config import load_params, section
from routelab.io import write_json
from routelab.report import summary_row
from routelab.stage import run_stage, stage_args
from routelab.statistics import StatsParams
from routelab.testbed import verdicts


def main() -> str:
    args = stage_args(__doc__, "--model", "--model-dir", "--metrics-dir", "--interventions", "--generation",
                      "--profile", "--ground-truth", "--out", outputs=("--out", "--ground-truth"))  # fmt: skip
    stats = section(StatsParams, load_params(args.params).get("statistics"), "statistics")
    found: list = []
    if args.model in verdicts.ROLES:
        out = verdicts.ModelOutputs(args.model, Path(args.metrics_dir), Path(args.interventions), Path(args.generation),
                                    Path(args.profile), Path(args.model_dir), alpha=stats.alpha,
                                    margin=stats.margin("pct_stereotype"), stats=stats)  # fmt: skip
        found = verdicts.judge(out, args.model)
    truth = verdicts.summary(found) | {"role": args.model if found else None}
    write_json(args.ground_truth, truth)
    row = summary_row(args.model, Path(args.metrics_dir).parent, truth)
    write_json(args.out, row)
    failed = [v.check for v in found if not v.holds]
    checks = (f"ground truth {truth['holds']}/{truth['checks']} checks hold" + (f" (FAILED: {', '.join(failed)})" if failed else "")
              if found else "not a testbed variant: no ground truth")  # fmt: skip
    return f"summary[{args.model}]: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "checks") + f"; {checks}"


if __name__ == "__main__":
    run_stage(main, "summary")
