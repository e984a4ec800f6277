"""What the pinned compute path must keep equal: hashes of numbers routelab computes, in one process.

Run as a script (tests/test_compute.py runs it in subprocesses under different CPU settings):

    python tests/compute_probe.py          # prints one JSON line: {"capability": ..., "train": ..., ...}

- ``train``: the weights of the testbed trainer (routelab.testbed.train_from_scratch: the
  OLMoE forward and backward, the router's aux loss, gradient clipping, fused AdamW) after a
  few steps on a tiny generated corpus;
- ``score``: the log-likelihoods of the scorer (routelab.scoring) on the trained model;
- ``numpy``: float64 exp/log/sum, a sort and a stable argsort with ties (numpy's SIMD loops);
- ``arrow``: an Arrow float sum and mean (pyarrow compute kernels).
"""

from __future__ import annotations

import hashlib
import json

import routelab  # noqa: F401  (first: pins the compute path before numpy, pyarrow and torch load)

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from routelab import testbed as tb
from routelab.testbed import train as train_mod
from routelab.config import section
from routelab.scoring import score

CONFIG = {
    "seed": 5,
    "corpus": {"sentences_per_descriptor": 20, "neutral_sentences": 40, "n_entities": 8, "values_per_relation": 6,
               "statement_repeats": 1, "qa_repeats": 1, "rare_entities": 2},
    "model": {"layers": 2, "hidden": 32, "intermediate": 32, "heads": 2, "experts": 4, "top_k": 2,
              "max_positions": 160},
    "train": {"steps": 6, "batch_size": 4, "seq_len": 32, "warmup_steps": 2},
}  # fmt: skip


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def probe() -> dict[str, str]:
    cfg = section(tb.TestbedParams, CONFIG, "testbed")
    corpus = tb.generate_corpus(cfg.corpus, strength=0.8, seed=cfg.seed)
    tok = tb.build_tokenizer([r["text"] for r in corpus.records])
    model, _ = train_mod.train_from_scratch(corpus.records, tok, cfg, progress=False)
    weights = _digest(v.detach().contiguous().numpy().tobytes() for _, v in sorted(model.state_dict().items()))
    texts = [r["text"] for r in corpus.records[:24]]
    lls = score(model, tok, [("", t) for t in texts], batch_size=8, progress=False)
    scores = _digest(np.array([x.logprob for x in lls], dtype=np.float64).tobytes() for _ in [0])
    x = np.random.default_rng(0).normal(size=4099)  # (N,) an odd length exercises the loops' tails
    keys = np.round(x, 1)  # many ties
    numbers = _digest([np.exp(x).tobytes(), np.log(np.abs(x) + 1).tobytes(), np.float64(x.sum()).tobytes(),
                       np.sort(keys).tobytes(), np.argsort(keys, kind="stable").tobytes()])  # fmt: skip
    arr = pa.array(x)
    arrow = _digest([pc.sum(arr).as_py().hex().encode(), pc.mean(arr).as_py().hex().encode()])
    return {"capability": torch.backends.cpu.get_cpu_capability(), "train": weights, "score": scores,
            "numpy": numbers, "arrow": arrow}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(probe()))
