"""Conditions per second: the intervention engine vs scoring conditions one after another.

Usage: python bench/conditions.py --model diffuse [--repeats 3]
(reads params.yaml for the model's spec, benchmark files, arr.lambdas and aals.lambda_probe,
data/profiles/<model>.parquet, metrics/<model>/aals.json and data/bench/<model>/splits; run
`dvc repro arr_sweep@<model>` first.)

Two workloads, the two stages that score many conditions of one kind on the validation split:
the AALS probes (ARR at λ_probe on one MoE layer each) and the λ sweep (ARR at every λ of
arr.lambdas on the AALS layers). Three ways to score them, same forward batch size
(models.<name>.batch_size):

* one after another: attach the condition's edit, score every request (tokenised for that
  pass), detach — what a loop over conditions does;
* per row: routelab.interventions.score_conditions(fork=False): requests tokenised once, each
  replicated per condition, every batch row under its own edit (routing.attach conditions);
* forked (the engine's default): the same, but the layers before a condition's first edited
  layer are computed once per batch and copied into its rows (routing.LayerFork).

Prints conditions/s for each, the ratios, the largest per-item log-likelihood difference to
one after another (float32 rounding from other batch shapes) and whether every per-item
decision (CrowS preference, MC1, BBQ answer…) is identical.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the compute path before torch, numpy and pyarrow load)

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from routelab.aals import AalsParams  # noqa: E402
from routelab.arr import ArrParams  # noqa: E402
from routelab.benchmarks.engine import item_lls, item_rows  # noqa: E402
from routelab.conditions import build  # noqa: E402
from routelab.config import section  # noqa: E402
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


def compare(ref, got, conds, suite):
    """(max |Δ| over float columns, every non-float column identical)."""
    diff, same = 0.0, True
    for c in conds:
        for name in suite.benches:
            a, b = ref[c.name][name], got[c.name][name]
            for col in a.columns:
                if a[col].dtype.is_float():
                    diff = max(diff, float(np.max(np.abs(a[col].to_numpy() - b[col].to_numpy()))))
                elif a[col].dtype.is_numeric():
                    same &= bool((a[col] == b[col]).all())
    return diff, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="diffuse")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    inputs = stage_inputs(args.params, args.model, f"data/profiles/{args.model}.parquet")
    suite = load_suite(inputs.bench, inputs.spec, inputs.bench.benchmarks, "validation",
                       splits_dir=f"data/bench/{args.model}/splits", baseline_dir=f"data/bench/{args.model}/baseline")
    aals = section(AalsParams, inputs.params.get("aals"), "aals")
    arr = section(ArrParams, inputs.params.get("arr"), "arr")
    selected = json.loads(open(f"metrics/{args.model}/aals.json").read())["selected"]
    workloads = {
        "AALS probes": [build("arr_layer", inputs.context(inputs.moe_layers, 0), lam=aals.lambda_probe, layer=layer)
                        for layer in inputs.moe_layers],
        f"λ sweep on layers {selected}": [build("arr", inputs.context(selected, 0), lam=lam) for lam in arr.lambdas],
    }  # fmt: skip
    lm = load_model(inputs.spec)
    n_req = sum(len(b.requests(it)) for b, items in suite.benches.values() for it in items)
    print(f"{args.model}: {n_req} requests per condition ({', '.join(suite.benches)}, validation split), "
          f"batch size {lm.spec.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for label, conds in workloads.items():
        times = {"one after another": [], "per row": [], "forked": []}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all three
            t0 = time.perf_counter()
            ref = one_after_another(lm, conds, suite)
            times["one after another"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rows = score_conditions(lm, conds, suite, progress=False, fork=False)
            times["per row"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            forked = score_conditions(lm, conds, suite, progress=False, fork=True)
            times["forked"].append(time.perf_counter() - t0)
        base = statistics.median(times["one after another"])
        print(f"{label} ({len(conds)} conditions):")
        for way, ts in times.items():
            m = statistics.median(ts)
            print(f"  {way:18s} {len(conds) / m:6.2f} conditions/s ({m:.2f} s)  ×{base / m:.2f}")
        for way, got in (("per row", rows), ("forked", forked)):
            diff, same = compare(ref, got, conds, suite)
            print(f"  {way}: max |Δ log-likelihood| {diff:.1e}; per-item decisions identical: {same}")


if __name__ == "__main__":
    main()
