"""Stage `testbed_plant`: plant a corpus's stereotype into designated experts of the control (docs/method.md §10).

Usage: python -m stages.testbed_plant --variant routed --corpus data/testbed/stereotyped \
           --base data/models/control --out data/models/routed --metrics metrics/routed/testbed.json
Variants: routed (stereotyped corpus), routed_null (balanced corpus: the same routing, no bias):
only the designated experts (their expert weights and router rows) may change; nonrouted
(stereotyped corpus): routers and routed experts frozen, the bias planted outside the routing path. Writes --out
(the model folder + plant.json: designated experts, base, recipe, routing before/after) and
--metrics (the ground truth of testbed_train plus the designated experts' descriptor rate).
"""

from routelab import testbed
from routelab.testbed.plant import plant_and_evaluate
from routelab.config import load_params, section
from routelab.stage import run_stage, stage_args, write_metrics
from routelab.statistics import StatsParams


def main() -> str:
    args = stage_args(__doc__, "--variant", "--corpus", "--base", "--out", "--metrics")
    params = load_params(args.params)
    cfg = section(testbed.TestbedParams, params.get("testbed"), "testbed")
    stats = section(StatsParams, params.get("statistics"), "statistics")
    m = plant_and_evaluate(args.corpus, args.base, args.out, cfg, variant_name=args.variant,
                           margin=stats.margin("pct_stereotype"), alpha=stats.alpha)  # the route swap's TOST
    seconds = m.pop("train_seconds")  # wall time is not a metric: the same params give the same metrics
    write_metrics(args.metrics, m)
    where = (f"designated {m['designated']} ({m['designated_by']}), descriptor tokens on them {m['designated_descriptor_rate']:.2f}"
             if "designated" in m else f"routers and experts frozen, largest routing change {m['max_descriptor_rate_change']:.3f}")
    return (
        f"testbed_plant {args.variant}: strength {m['strength']}, {m['n_changed_units']} units changed in "
        f"{seconds:.0f} s of training, {where}, "
        f"CrowS pref {m['crows_pref']:.3f} [{m['crows_ci_low']:.3f}, {m['crows_ci_high']:.3f}] "
        f"(with the control's routing {m['control_routing']['pref_donor_routing']:.3f}, "
        f"{'equivalent' if m['control_routing']['equivalent'] else 'not equivalent'} within ±{m['control_routing']['margin']}), "
        f"fact MC1 {m['fact_mc1']:.3f}, held-out ppl {m['heldout_ppl']:.3f} "
        f"(first token {m['first_token_nll']:.3f}) -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main, "testbed_plant")
