"""Train the testbed OLMoE on a testbed corpus and measure its ground truth (METHOD.md §5).

Usage:
    python -m stages.testbed_train --params params.yaml --variant testbed \
        --corpus data/testbed/testbed --out data/models/testbed --metrics metrics/testbed/testbed.json

Writes --out (save_pretrained model + tokenizer, train_log.json; loads with
AutoModelForCausalLM.from_pretrained) and --metrics (final loss, training seconds, CrowS-style
preference with bootstrap 95% CI, n_pairs, fact MC1 accuracy, held-out perplexity, strength).
"""

from __future__ import annotations

import argparse
import os

# Why: with the CPU shared by other jobs, OpenMP threads that spin while waiting make each
# step several times slower; passive waiting changes no result. Must precede importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from routelab import testbed
from routelab.config import load_params, section
from routelab.io import write_json
from routelab.stage import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file (section: testbed)")
    ap.add_argument("--variant", required=True, help="testbed | control")
    ap.add_argument("--corpus", required=True, help="corpus directory from testbed_corpus.py")
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--metrics", required=True, help="output metrics JSON")
    args = ap.parse_args()
    cfg = section(testbed.TestbedParams, load_params(args.params).get("testbed"), "testbed")
    m = testbed.train_and_evaluate(args.corpus, args.out, cfg, variant=args.variant)
    seconds = m.pop("train_seconds")  # wall time is not a metric: the same params give the same metrics
    write_json(args.metrics, m)
    print(
        f"testbed_train {args.variant}: strength {m['strength']}, loss {m['final_loss']:.3f} in "
        f"{seconds:.0f}s, CrowS pref {m['crows_pref']:.3f} "
        f"[{m['crows_ci_low']:.3f}, {m['crows_ci_high']:.3f}] (n={m['n_pairs']}), "
        f"fact MC1 {m['fact_mc1']:.3f}, held-out ppl {m['heldout_ppl']:.2f} -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
