"""Stage `profile`: FSP sensitivity profile φ(e,l), architecture descriptors, plots.

Usage: python -m stages.profile --model testbed --routing data/routing/testbed.parquet \
           --prompts data/prompts/testbed.parquet --out data/profiles/testbed.parquet \
           --layer-axis data/profiles/testbed_layer_axis.parquet \
           --metrics metrics/testbed/profile.json --plots plots/testbed
Writes <out> (one row per (layer, expert), column `phi`: what ARR reads), <layer-axis> (JSD per
layer and axis), the descriptors and permutation null as metrics, and three figures.
"""

from pathlib import Path

from routelab import plots
from routelab.config import load_params, section
from routelab.io import write_json, write_parquet
from routelab.profile import ProfileParams, compute_profile
from routelab.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "--model", "--routing", "--prompts", "--out", "--layer-axis", "--metrics", "--plots")
    cfg = section(ProfileParams, load_params(args.params).get("profile"), "profile")
    profile, layer_axis, desc = compute_profile(args.routing, args.prompts, cfg)
    write_parquet(profile, args.out)
    write_parquet(layer_axis, args.layer_axis)
    write_json(args.metrics, desc)
    out = Path(args.plots)
    plots.phi_heatmap(profile, out / "phi_heatmap.png", title=args.model)
    plots.jsd_by_axis(layer_axis, out / "jsd_by_axis.png", title=args.model)
    plots.routing_shift(profile, out / "routing_shift.png", title=args.model)
    perm = desc["permutation"]
    print(f"profile[{args.model}]: φ over {desc['expert_slots']} expert slots; top expert "
          f"L{desc['top_phi_layer']}/E{desc['top_phi_expert']}; routing shift JSD {perm['shift_jsd']:.4g} "
          f"(permutation p = {perm['p_value']})")


if __name__ == "__main__":
    run_stage(main)
