"""Conditions per second: C conditions scored in one batched pass vs one after another.

Usage: python bench/conditions.py --model diffuse [--conditions 8] [--repeats 3]
(reads params.yaml for the model's spec and benchmark files, data/profiles/<model>.parquet for
φ and data/bench/<model>/splits for the validation split; run `dvc repro bench_baseline@<model>`
and `dvc repro profile@<model>` first.)

One after another is what a loop over conditions would do: attach the condition's edit, score
every request of the split (tokenised for that pass), detach. Batched is the intervention
engine (routelab.interventions.score_conditions): requests tokenised once, each request
replicated per condition, every batch row under its own edit. Both use the model's batch size
(models.<name>.batch_size) for the forward batches. The script prints conditions/s for both,
their ratio, and the largest per-item log-likelihood difference between the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from routelab.benchmarks.engine import item_lls, item_rows  # noqa: E402
from routelab.conditions import build  # noqa: E402
from routelab.interventions import load_suite, score_conditions, stage_inputs  # noqa: E402
from routelab.models import load_model  # noqa: E402
from routelab.routing import attach  # noqa: E402


def one_after_another(lm, conds, suite):
    out = {}
    for c in conds:
        out[c.name] = {}
        with attach(lm, edit=c.edit):
            for name, (bench, items) in suite.benches.items():
                lls = item_lls(lm.model, lm.tokenizer, bench, items, batch_size=lm.spec.batch_size, progress=False)
                out[c.name][name] = item_rows(bench, items, lls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diffuse")
    ap.add_argument("--conditions", type=int, default=8, help="ARR conditions (λ grid on all layers)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    inputs = stage_inputs(args.params, args.model, f"data/profiles/{args.model}.parquet")
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "validation",
                       splits_dir=f"data/bench/{args.model}/splits", baseline_dir=f"data/bench/{args.model}/baseline")
    ctx = inputs.context(inputs.moe_layers, 0)
    conds = [build("arr", ctx, lam=0.25 * (i + 1)) for i in range(args.conditions)]
    lm = load_model(inputs.spec)
    n_req = sum(len(b.requests(it)) for b, items in suite.benches.values() for it in items)
    print(f"{args.model}: {len(conds)} conditions × {n_req} requests ({', '.join(suite.benches)}), "
          f"batch size {lm.spec.batch_size}, {torch.get_num_threads()} threads")
    t_seq, t_bat = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        t0 = time.perf_counter()
        seq = one_after_another(lm, conds, suite)
        t_seq.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bat = score_conditions(lm, conds, suite, progress=False)
        t_bat.append(time.perf_counter() - t0)
    diff = 0.0
    for c in conds:
        for name in suite.benches:
            a, b = seq[c.name][name], bat[c.name][name]
            for col in a.columns:
                if a[col].dtype.is_float():
                    diff = max(diff, float(np.max(np.abs(a[col].to_numpy() - b[col].to_numpy()))))
    ms, mb = statistics.median(t_seq), statistics.median(t_bat)
    print(f"one after another: {len(conds) / ms:.2f} conditions/s (median of {args.repeats}: {ms:.1f} s)")
    print(f"batched:           {len(conds) / mb:.2f} conditions/s (median of {args.repeats}: {mb:.1f} s)")
    print(f"speed-up {ms / mb:.2f}×; max |Δ| of any per-item float column {diff:.2e}")


if __name__ == "__main__":
    main()
