"""Stage `safex`: SAFEx-style stable expert selection, fairness adaptation (docs/method.md §7).

Usage: python -m stages.safex --model diffuse --routing data/routing/diffuse.parquet \
           --prompts data/prompts/diffuse.parquet --out data/selections/diffuse_safex.parquet \
           --metrics metrics/diffuse/safex.json
Writes <out> (one row per (layer, expert): score, selected, stability; routelab.tables
load_selection reads it) and the selection's size and settings as metrics.
"""

from routelab.config import load_params, section
from routelab.io import write_parquet
from routelab.safex import SafexParams, safex_fairness
from routelab.stage import run_stage, stage_args, write_metrics


def main() -> str:
    args = stage_args(__doc__, "--model", "--routing", "--prompts", "--out", "--metrics")
    cfg = section(SafexParams, load_params(args.params).get("safex"), "safex")
    selection, summary = safex_fairness(args.routing, args.prompts, cfg)
    write_parquet(selection, args.out)
    write_metrics(args.metrics, summary)
    return (f"safex[{args.model}]: {summary['safex_selected']} experts in the top {summary['top_n']} of their "
            f"layer in all {cfg.n_resamples} resamples: {', '.join(summary['selected_experts']) or 'none'}")


if __name__ == "__main__":
    run_stage(main, "safex")
