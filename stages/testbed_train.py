"""Stage `testbed_train`: train a testbed variant's OLMoE from scratch and measure its ground truth (docs/method.md §10).

Usage: python -m stages.testbed_train --variant diffuse --corpus data/testbed/stereotyped \
           --out data/models/diffuse --metrics metrics/diffuse/testbed.json
Variants: control (balanced corpus), diffuse (stereotyped corpus). Writes --out
(save_pretrained model + tokenizer, train_log.json; loads with AutoModelForCausalLM.from_pretrained)
and --metrics (final loss, CrowS-style preference with bootstrap 95% CI, fact MC1 accuracy,
held-out perplexity, first-token NLL, strength, steps).
"""

from routelab import testbed
from routelab.testbed.train import train_and_evaluate
from routelab.config import load_params, section
from routelab.stage import run_stage, stage_args, write_metrics


def main() -> str:
    args = stage_args(__doc__, "--variant", "--corpus", "--out", "--metrics")
    cfg = section(testbed.TestbedParams, load_params(args.params).get("testbed"), "testbed")
    m = train_and_evaluate(args.corpus, args.out, cfg, variant_name=args.variant)
    seconds = m.pop("train_seconds")  # wall time is not a metric: the same params give the same metrics
    write_metrics(args.metrics, m)
    return (
        f"testbed_train {args.variant}: strength {m['strength']}, loss {m['final_loss']:.3f} in "
        f"{seconds:.0f} s of training, CrowS pref {m['crows_pref']:.3f} "
        f"[{m['crows_ci_low']:.3f}, {m['crows_ci_high']:.3f}] (n={m['n_pairs']}), "
        f"fact MC1 {m['fact_mc1']:.3f}, held-out ppl {m['heldout_ppl']:.3f} "
        f"(first token {m['first_token_nll']:.3f}) -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main, "testbed_train")
