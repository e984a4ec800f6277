"""Stage `check_params`: the whole params.yaml checked before any other stage runs (routelab.params).

Usage: python -m stages.check_params --out data/params_ok.json
Every section and key against the dataclass that reads it (a typo is named with the nearest
known key), pipeline.models against models:, then each section's own checks. The root stages
depend on --out, so DVC runs this first: a bad params.yaml stops the run in seconds, before DVC
removes any stage's outputs. --out holds a constant stamp, so a params change that passes
re-runs only the stages that read what changed. Same check by hand: `routelab check-params`.
"""

from routelab.errors import RoutelabError
from routelab.io import write_json
from routelab.params import check_params
from routelab.stage import run_stage, stage_args


def main() -> str:
    args = stage_args(__doc__, "--out", outputs=("--out",))
    problems = check_params(args.params, fast=True) or check_params(args.params)
    if problems:
        more = f" (and {len(problems) - 1} more: run `routelab check-params`)" if len(problems) > 1 else ""
        raise RoutelabError(problems[0] + more)
    write_json(args.out, {"params": "checked"})  # constant: downstream stages re-run only on their own params
    return f"check_params: {args.params} is valid"


if __name__ == "__main__":
    run_stage(main, "check_params")
