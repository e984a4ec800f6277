"""Stage `profile`: FSP sensitivity profile φ(e,l) with per-expert significance, descriptors, plots.

Usage: python -m stages.profile --model diffuse --routing data/routing/diffuse.parquet \
           --prompts data/prompts/diffuse.parquet --out data/profiles/diffuse.parquet \
           --layer-axis data/profiles/diffuse_layer_axis.parquet \
           --metrics metrics/diffuse/profile.json --plots plots/models/diffuse/profile \
           [--model-dir data/models/diffuse]
Writes <out> (one row per (layer, expert): `phi`, what ARR reads, and `ard_p`/`ard_p_bh`/
`significant`, the per-expert permutation test), <layer-axis> (JSD per layer and axis), the
descriptors and both routing-shift tests as metrics, and three figures. With --model-dir holding
a plant.json (a planted testbed), the heatmap boxes the designated experts and the metrics
report their φ ranks.
"""

from pathlib import Path

from routelab import plots
from routelab.config import load_params, section
from routelab.io import write_parquet
from routelab.profile import ProfileParams, compute_profile
from routelab.profile_null import load_designated
from routelab.stage import format_p, run_stage, stage_args, write_metrics

def main() -> str:
    args = stage_args(__doc__, "--model", "--routing", "--prompts", "--out", "--layer-axis", "--metrics", "--plots",
                      optional=("--model-dir",))  # --model-dir: a plant.json there marks designated experts
    cfg = section(ProfileParams, load_params(args.params).get("profile"), "profile")
    designated = load_designated(args.model_dir)
    profile, layer_axis, desc = compute_profile(args.routing, args.prompts, cfg, designated=designated)
    write_parquet(profile, args.out)
    write_parquet(layer_axis, args.layer_axis)
    write_metrics(args.metrics, desc)
    out = Path(args.plots)
    plots.phi_heatmap(profile, out / "phi_heatmap.png", title=args.model, designated=designated)
    plots.jsd_by_axis(layer_axis, out / "jsd_by_axis.png", title=args.model)
    plots.routing_shift(profile, out / "routing_shift.png", title=args.model)
    plots.layer_shift_csv(profile, layer_axis, out / "layer_shift.csv")
    shift = {k: "n/a" if v is None else f"JSD {v['shift_jsd']:.3g} (p = {format_p(v['p_value'])})"
             for k, v in desc["routing_shift"].items()}  # fmt: skip
    return (f"profile[{args.model}]: φ over {desc['expert_slots']} expert slots, top L{desc['top_phi_layer']}/"
          f"E{desc['top_phi_expert']}; BH-significant experts {desc['ard_null']['n_significant']}; routing shift "
          f"with descriptor {shift['with_descriptor']}, without {shift['without_descriptor']}")  # fmt: skip


if __name__ == "__main__":
    run_stage(main, "profile")
