"""What the pinned compute path costs: testbed training steps/s and scoring tokens/s, pinned vs native (not a test).

Usage:
    .venv/bin/python bench/compute_pin.py                  # 3 rounds, each: a pinned and a native worker
    .venv/bin/python bench/compute_pin.py --rounds 5 --steps 60

Each worker is a fresh process (the path is chosen before torch loads): the pinned one with the
default environment (routelab.compute), the native one with ROUTELAB_COMPUTE=native (the
libraries' own dispatch: AVX-512 and MKL's native branch where the CPU has them). Both use the
testbed's default model (testbed.model: 4 layers, hidden 128, 16 experts top-2) on a generated
corpus, the pinned thread count, and time
- training: ``--steps`` AdamW steps of routelab.testbed.train_from_scratch after 5 warm-up steps;
- scoring: routelab.scoring.score on the corpus's sentences (tokens/s).
Workers alternate (pinned, native, pinned, …) so drift in the machine's load hits both; the
medians over rounds and their ratio are printed. Run it on a quiet machine.
"""

from __future__ import annotations

import routelab  # noqa: F401  (first: the compute path is chosen before torch loads)

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from routelab import compute


def worker(steps: int) -> dict[str, float]:
    import torch

    from routelab import testbed as tb
    from routelab.config import section
    from routelab.scoring import score
    from routelab.testbed.train import train_from_scratch

    base = {"seed": 0, "train": {"steps": 5, "warmup_steps": 2}}
    cfg = section(tb.TestbedParams, base, "testbed")
    corpus = tb.generate_corpus(cfg.corpus, strength=0.8, seed=0)
    tok = tb.build_tokenizer([r["text"] for r in corpus.records])
    train_from_scratch(corpus.records, tok, cfg, progress=False)  # warm-up (first-call costs)
    cfg = section(tb.TestbedParams, {**base, "train": {"steps": steps, "warmup_steps": 2}}, "testbed")
    t0 = time.perf_counter()
    model, _ = train_from_scratch(corpus.records, tok, cfg, progress=False)
    train_s = time.perf_counter() - t0
    texts = [r["text"] for r in corpus.records[:2048]]
    reqs = [("", t) for t in texts]
    score(model, tok, reqs[:64], batch_size=32, progress=False)  # warm-up
    t0 = time.perf_counter()
    lls = score(model, tok, reqs, batch_size=32, progress=False)
    score_s = time.perf_counter() - t0
    return {"steps_per_s": steps / train_s, "tokens_per_s": sum(x.n_tokens for x in lls) / score_s,
            "capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
        return
    env = {k: v for k, v in os.environ.items() if k not in (*compute.PINNED, *compute.THREAD_VARIABLES)}
    runs: dict[str, list[dict]] = {"pinned": [], "native": []}
    for r in range(args.rounds):
        for path in ("pinned", "native"):
            e = {**env, "ROUTELAB_COMPUTE": path}
            out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps)], env=e,
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            runs[path].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {path:6s} ({runs[path][-1]['capability']}): "
                  f"{runs[path][-1]['steps_per_s']:.2f} steps/s, {runs[path][-1]['tokens_per_s']:,.0f} tokens/s", flush=True)  # fmt: skip
    med = {p: {k: statistics.median(x[k] for x in v) for k in ("steps_per_s", "tokens_per_s")} for p, v in runs.items()}
    print(f"\ntraining  pinned {med['pinned']['steps_per_s']:.2f} vs native {med['native']['steps_per_s']:.2f} steps/s: "
          f"pinned/native = {med['pinned']['steps_per_s'] / med['native']['steps_per_s']:.2f}")
    print(f"scoring   pinned {med['pinned']['tokens_per_s']:,.0f} vs native {med['native']['tokens_per_s']:,.0f} tokens/s: "
          f"pinned/native = {med['pinned']['tokens_per_s'] / med['native']['tokens_per_s']:.2f}")
    print(f"({compute.threads()} threads, medians of {args.rounds} rounds, {args.steps} steps each)")


if __name__ == "__main__":
    main()
