"""Benchmark FSP profiling (routelab.counting's one pass + routelab.profile) on a routing log of
OLMoE's shape (16 layers x 64 experts, top-8).

Usage::

    PYTHONPATH=src .venv/bin/python bench/fsp.py                 # 10M token-layer rows
    PYTHONPATH=src .venv/bin/python bench/fsp.py --rows 2000000 --keep /tmp/rl_bench

Generates (streaming, one row group at a time, with pyarrow) a routing file with random
router logits and a consistent top-k, plus a matching prompt table (contexts of one neutral
prompt and six variants over 40 groups, ~11 tokens per prompt, like FARE prompts; a planted
shift: at layer 5, group g's tokens get +2 on expert g mod 64). The profile then runs in a
fresh subprocess so its peak RSS (ru_maxrss of the child) is the profile's own.
Target (brief): <= 60 s and <= 4 GB on 2 cores for 10M rows.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: pins the compute path before torch, numpy and pyarrow load)

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from routelab.tables import RoutingMeta, routing_schema as arrow_schema

L, K, TOP_K = 16, 64, 8  # OLMoE-1B-7B
PLANT_LAYER = 5


def generate(workdir: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Write routing.parquet and prompts.parquet into ``workdir``; return their paths."""
    rng = np.random.default_rng(seed)
    n_tok = rows // L
    lens: list[int] = []
    while sum(lens) < n_tok:
        lens.append(int(min(rng.integers(8, 15), n_tok - sum(lens))))
    P = len(lens)
    ids = [f"p{i:06d}" for i in range(P)]
    # contexts of 7 prompts: member 0 neutral, members 1..6 demographic
    ctx = np.arange(P) // 7
    member = np.arange(P) % 7
    group_idx = np.where(member == 0, -1, (ctx * 6 + member - 1) % 40)  # -1 = neutral
    axes = ["gender", "race", "religion", "nationality", "age", "sexuality", "disability", "socioeconomic", "political"]
    prompts = pl.DataFrame(
        {
            "prompt_id": ids,
            "text": [""] * P,
            "axis": [None if g < 0 else axes[g % 9] for g in group_idx],
            "group": ["neutral" if g < 0 else f"g{g:02d}" for g in group_idx],
            "context_id": [f"c{c:05d}" for c in ctx],
            "split": ["validation"] * P,
            "desc_start": [None if g < 0 else 1 for g in group_idx],
            "desc_end": [None if g < 0 else 2 for g in group_idx],
        }
    )
    prompts_path = workdir / "prompts.parquet"
    prompts.write_parquet(prompts_path)

    meta = RoutingMeta(
        model="bench-olmoe-shape", family="olmoe", num_experts=K, top_k=TOP_K, moe_layers=list(range(L)),
        dtype="float32", transformers_version="bench", torch_version="bench",
    )  # fmt: skip
    schema = arrow_schema(meta)
    bias = rng.normal(0, 0.5, size=(L, K)).astype(np.float32)  # non-uniform expert use (Gini > 0)
    lens_a = np.asarray(lens)
    routing_path = workdir / "routing.parquet"
    with pq.ParquetWriter(routing_path, schema) as w:
        i = 0
        while i < P:
            j, n_rows = i, 0
            while j < P and n_rows < 1_000_000:  # ~1M rows per row group
                n_rows += lens_a[j] * L
                j += 1
            seg = lens_a[i:j]
            prompt = np.repeat(np.arange(i, j), seg * L)  # prompt-major, then layer, then pos
            layer = np.concatenate([np.repeat(np.arange(L), n) for n in seg])
            pos = np.concatenate([np.tile(np.arange(n), L) for n in seg])
            logits = rng.standard_normal((n_rows, K), dtype=np.float32) + bias[layer]  # (R, K)
            g = group_idx[prompt]
            hit = (layer == PLANT_LAYER) & (g >= 0)
            logits[hit, g[hit] % K] += 2.0
            top = np.argpartition(-logits, TOP_K, axis=1)[:, :TOP_K]  # (R, k) unordered
            order = np.argsort(-np.take_along_axis(logits, top, 1), axis=1)
            top = np.take_along_axis(top, order, 1).astype(np.int16)  # (R, k) by logit, desc
            w.write_table(
                pa.table(
                    {
                        "prompt_id": pa.array(np.asarray(ids)[prompt]),
                        "layer": pa.array(layer.astype(np.int16)),
                        "pos": pa.array(pos.astype(np.int32)),
                        "token_id": pa.array(rng.integers(0, 50_000, n_rows, dtype=np.int32)),
                        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), K),
                        "topk": pa.FixedSizeListArray.from_arrays(pa.array(top.ravel()), TOP_K),
                    },
                    schema=schema,
                )
            )
            i = j
    return routing_path, prompts_path


CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from routelab.io import write_parquet
from routelab.profile import ProfileParams, compute_profile
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
prof, la, d = compute_profile(sys.argv[1], sys.argv[2], ProfileParams(split="all", n_permutations=int(sys.argv[4])))
write_parquet(prof, sys.argv[3])
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "import_seconds": t_import, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "top_phi": [d["top_phi_layer"], d["top_phi_expert"]], "gini": d["gini_f"], "rho": d["spearman_rho_phi_f"],
                  "perm": d["routing_shift"]["with_descriptor"], "rows_profile": prof.height,
                  "top_layer5": prof.filter(prof["layer"] == 5).sort("phi", descending=True)["expert"].head(5).to_list()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="token-layer rows (default 10M)")
    ap.add_argument("--permutations", type=int, default=1000, help="permutation-null draws")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (reused if it holds the files)")
    args = ap.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="routelab_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        routing, prompts = workdir / "routing.parquet", workdir / "prompts.parquet"
        if not (routing.exists() and prompts.exists() and pq.ParquetFile(routing).metadata.num_rows == args.rows):
            t0 = time.perf_counter()
            routing, prompts = generate(workdir, args.rows)
            print(f"generated {args.rows:,} rows ({routing.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(routing), str(prompts), str(workdir / "profile.parquet"), str(args.permutations)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            sys.exit(f"profile failed:\n{res.stderr}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n_prompts = pl.scan_parquet(prompts).select(pl.len()).collect().item()
        print(f"rows {args.rows:,}  prompts {n_prompts:,}  layers {L}  experts {K}  top-k {TOP_K}")
        print(f"profile time   {out['seconds']:.1f} s  (+{out['import_seconds']:.1f} s imports; target <= 60 s)")
        print(f"peak RSS       {max(out['maxrss_mb'], child_rss):.0f} MB (target <= 4096 MB)")
        print(f"permutations   {out['perm']['n_permutations']} over {out['perm']['n_contexts_tested']} contexts, "
              f"p = {out['perm']['p_value']}")  # fmt: skip
        print(f"top phi        layer {out['top_phi'][0]} expert {out['top_phi'][1]}; layer {PLANT_LAYER} top-5 {out['top_layer5']}")
        print(f"gini(f) {out['gini']:.3f}  rho(phi, f) {out['rho']}")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
