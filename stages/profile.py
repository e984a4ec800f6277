"""Stage `profile`: FSP sensitivity profile φ(e,l), architecture descriptors, plots, SAFEx set.

Usage: python -m stages.profile --model testbed --routing data/routing/testbed.parquet \
           --prompts data/prompts/testbed.parquet --out data/profiles/testbed \
           --metrics metrics/testbed/fsp.json --plots plots/testbed
Writes <out>.parquet (one row per (layer, expert), column `phi`: what ARR reads),
<out>_layer_axis.parquet (JSD per layer and axis) and <out>_safex.parquet (SAFEx selection).
"""

from pathlib import Path

from routelab import plots
from routelab.config import load_params, section
from routelab.detect import SafexParams, safex_fairness
from routelab.io import write_json, write_parquet
from routelab.profile import ProfileParams, compute_profile
from routelab.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "--model", "--routing", "--prompts", "--out", "--metrics", "--plots")
    params = load_params(args.params)
    cfg = section(ProfileParams, params.get("fsp"), "fsp")  # FSP: the method's name for this step
    safex_cfg = section(SafexParams, params.get("safex"), "safex")
    profile, layer_axis, desc = compute_profile(args.routing, args.prompts, cfg)
    safex = safex_fairness(args.routing, args.prompts, safex_cfg)
    write_parquet(profile, f"{args.out}.parquet")
    write_parquet(layer_axis, f"{args.out}_layer_axis.parquet")
    write_parquet(safex, f"{args.out}_safex.parquet")
    desc["safex_selected"] = int(safex["selected"].sum())
    write_json(args.metrics, desc)
    out = Path(args.plots)
    plots.phi_heatmap(profile, out / "phi_heatmap.png", title=args.model)
    plots.jsd_by_axis(layer_axis, out / "jsd_by_axis.png", title=args.model)
    plots.routing_shift(profile, out / "routing_shift.png", title=args.model)
    perm = desc.get("permutation") or {}
    print(f"profile[{args.model}]: φ over {desc['expert_slots']} expert slots; top expert "
          f"L{desc['top_phi_layer']}/E{desc['top_phi_expert']}; routing shift JSD {perm.get('shift_jsd')} "
          f"(permutation p = {perm.get('p_value')}); SAFEx keeps {desc['safex_selected']} experts")


if __name__ == "__main__":
    run_stage(main)
